"""Identity at the connection (issue 14, item 2): on an embedded Bridge's worker lane the
envelopes go without broker tokens; the Bridge checks them against the connection and
stamps the trust level; workers that check signatures still get signed envelopes; a
Bridge on Redis keeps per-message tokens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import create_app
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport

from ..servers import serve
from .conftest import WAIT, BridgeFixture, recorder
from .test_lane import raw_lane

pytestmark = pytest.mark.timeout(60)


def _count(manager: BrokerTokenManager, name: str) -> list[int]:
    calls = [0]
    original = getattr(manager, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(manager, name, counting)
    return calls


async def test_the_lane_carries_no_per_message_signature(bridge: BridgeFixture) -> None:
    auth = await bridge.worker("exprsn-auth", setup=lambda w: w.on("user:validate", lambda d, m: {"ok": d["n"]}))
    timeline = await bridge.worker("exprsn-timeline")
    assert timeline.transport.sends_unsigned and auth.transport.vouched
    signs = _count(timeline.tokens, "sign_claims") + _count(auth.tokens, "sign_claims")
    verifies = _count(auth.tokens, "verify_envelope") + _count(timeline.tokens, "verify_envelope")
    bridge_verifies = _count(bridge.bridge.verifier, "verify_envelope")

    for n in range(5):
        assert await timeline.request("exprsn-auth", "user:validate", {"n": n}, timeout=WAIT) == {"ok": n}
    got = recorder(auth, "post:created")
    result = await timeline.emit("post:created", {"id": 1}, target="exprsn-auth")
    data, meta = await asyncio.wait_for(got.get(), WAIT)

    assert result.envelope.token is None
    assert (data, meta.source, meta.trust) == ({"id": 1}, "exprsn-timeline", "shared-key")
    assert meta.token["source"] == "exprsn-timeline" and meta.token["id"] == result.envelope.metadata["messageId"]
    # Nobody signed or checked a message: the connections' identity stands for them.
    assert sum(signs) == sum(verifies) == sum(bridge_verifies) == 0


async def test_a_lane_worker_cannot_restamp_or_respeak(bridge: BridgeFixture) -> None:
    """The stamp is the connection's: a shared-key connection claiming credential trust, or
    another source, is refused, counted, and the connection keeps serving."""
    herald = await bridge.worker("exprsn-herald")
    got = recorder(herald, "note")
    async with raw_lane(bridge.url) as lane:
        auth = {"token": bridge.token("exprsn-timeline"), "protocol": ENVELOPE_PROTOCOL, "identity": "connection"}
        answer = await lane.join("/ipc/exprsn-timeline", auth)
        assert answer.data["identity"] == "connection" and answer.data["trust"] == "shared-key"

        def envelope(source: str, trust: str, n: int) -> str:
            return json.dumps(
                {"event": "note", "data": {"n": n}, "source": source, "target": "exprsn-herald",
                 "operation": "event", "requireAck": False, "timestamp": 1,
                 "metadata": {"messageId": f"m{n}", "trust": trust}}
            )  # fmt: skip

        for n, (source, trust) in enumerate(
            [("exprsn-timeline", "credential"), ("exprsn-auth", "shared-key"), ("exprsn-timeline", "shared-key")]
        ):
            (reply,) = await lane.call("/ipc/exprsn-timeline", "ipc:publish", envelope(source, trust, n))
            assert reply.get("error") == (None if n == 2 else "UNAUTHORIZED"), reply
    data, meta = await asyncio.wait_for(got.get(), WAIT)
    assert data == {"n": 2} and meta.trust == "shared-key" and got.empty()
    assert (await bridge.stats())["counters"]["rejected"]["UNAUTHORIZED"] == 2


async def test_workers_that_check_signatures_get_signed_envelopes(bridge: BridgeFixture) -> None:
    checking = await bridge.worker("exprsn-herald", lane=False)  # python-socketio: no identity at the connection
    assert not checking.transport.vouched
    got = recorder(checking, "post:created")
    timeline = await bridge.worker("exprsn-timeline")
    result = await timeline.emit("post:created", {"id": 9}, target="broadcast")
    assert result.envelope.token is None
    data, meta = await asyncio.wait_for(got.get(), WAIT)
    assert data == {"id": 9} and meta.source == "exprsn-timeline"
    assert isinstance(meta.message.token, str) and meta.token["source"] == "exprsn-timeline"


async def test_a_bridge_on_redis_keeps_per_message_tokens(redis_url: str) -> None:
    settings = make_test_settings(ipc_transport="bridge", redis_url=redis_url, ipc_rate_max=100_000)
    async with serve(create_app(settings)) as url:
        workers = [
            IPCWorker(name, settings=settings, transport=BridgeTransport(settings, url=url))
            for name in ("exprsn-auth", "exprsn-timeline")
        ]
        auth, timeline = workers
        got = recorder(auth, "post:created")
        try:
            for worker in workers:
                await worker.start()
            assert not timeline.transport.sends_unsigned and not auth.transport.vouched
            result = await timeline.emit("post:created", {"id": 1}, target="exprsn-auth")
            assert isinstance(result.envelope.token, str)
            _, meta = await asyncio.wait_for(got.get(), WAIT)
            assert meta.trust == "shared-key" and meta.message.token == result.envelope.token
        finally:
            for worker in workers:
                await worker.disconnect()
