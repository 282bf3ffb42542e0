"""Issue 16, finding 3: an envelope is accepted once, across Bridges and on Redis itself.

The Bridges on one Redis share their replay guard (``SET ipc:replay:<id> NX`` until the
token expires), so an envelope accepted by one is refused by the other. Anyone who can
publish on Redis can resend a captured envelope straight onto a channel: each worker
remembers the token ids it handled and refuses the copy.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from exprsn_ipc import IPCWorker
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL, LOGIN_OPERATION, channel_for
from exprsn_ipc.protocol.tokens import BrokerTokenManager, decode_unverified
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport.redis.keys import REPLAY_PREFIX

from ..bridge.conftest import recorder
from ..conftest import RedisWorkerFactory
from .conftest import WAIT, BridgeFixture

pytestmark = pytest.mark.timeout(30)


async def test_an_envelope_accepted_by_one_bridge_is_a_replay_at_the_other(
    bridges: tuple[BridgeFixture, BridgeFixture], redis_client: Redis
) -> None:
    one, two = bridges
    listener = await one.worker("exprsn-herald")
    got = recorder(listener, "user:deleted")
    clients = [
        await bridge.client("/ipc/exprsn-auth").connect(
            {"token": bridge.token("exprsn-auth", operation=LOGIN_OPERATION), "protocol": ENVELOPE_PROTOCOL}
        )
        for bridge in (one, two)
    ]
    envelope = BrokerTokenManager(service_name="exprsn-auth", settings=one.settings).sign_envelope(
        "user:deleted", {"id": 3}, target="exprsn-herald"
    )
    raw = envelope.encode().decode("utf-8")
    assert (await clients[0].call("ipc:publish", raw))["success"] is True
    replay = await clients[1].call("ipc:publish", raw)
    assert replay["success"] is False and replay["error"] == "TOKEN_REPLAYED"
    assert (await asyncio.wait_for(got.get(), WAIT))[0] == {"id": 3}
    await listener.idle()
    assert got.empty()
    # The shared key lives as long as the token, not for ever.
    assert envelope.token is not None
    ttl = await redis_client.pttl(f"{REPLAY_PREFIX}{decode_unverified(envelope.token)['id']}")
    assert 0 < ttl <= one.settings.ipc_token_ttl * 1000


async def test_a_worker_on_redis_handles_an_envelope_published_twice_once(
    redis_workers: RedisWorkerFactory, redis_settings: Settings, redis_client: Redis
) -> None:
    queues: list[asyncio.Queue[object]] = []

    def setup(worker: IPCWorker) -> None:
        queues.append(recorder(worker, "user:deleted"))  # type: ignore[arg-type]

    herald = await redis_workers("exprsn-herald", setup=setup)
    envelope = BrokerTokenManager(service_name="exprsn-auth", settings=redis_settings).sign_envelope(
        "user:deleted", {"id": 9}, target="exprsn-herald"
    )
    raw = envelope.encode()
    for _ in range(3):
        assert await redis_client.publish(channel_for("exprsn-herald"), raw) == 1
    follow = BrokerTokenManager(service_name="exprsn-auth", settings=redis_settings).sign_envelope(
        "user:deleted", {"id": 10}, target="exprsn-herald"
    )
    await redis_client.publish(channel_for("exprsn-herald"), follow.encode())
    seen = [(await asyncio.wait_for(queues[0].get(), WAIT))[0] for _ in range(2)]  # type: ignore[index]
    assert seen == [{"id": 9}, {"id": 10}]
    await herald.idle()
    assert queues[0].empty()
    assert herald.stats.rejected["TOKEN_REPLAYED"] == 2
