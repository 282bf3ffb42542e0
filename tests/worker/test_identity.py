"""Identity in the Redis shared-key zone (issue 14, item 2).

On Redis anyone holding the shared key may publish an envelope claiming any
``source``. A worker with its own credential countersigns each message's token
(``metadata.credential``); receivers mark it ``meta.trust == "credential"``, and
refuse an envelope that claims a credentialed service but carries only the shared
key's signature (``CREDENTIAL_REQUIRED``), counted, while they keep serving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from exprsn_ipc.certs import generate_certificates
from exprsn_ipc.certs.credentials import issue_credential
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    generate_certificates(folder, only=[])
    issue_credential(folder, "timeline")
    return folder


async def test_countersigned_messages_are_trusted_and_forgeries_refused(
    redis_workers: Any, redis_settings: Settings, redis_client: Redis, certs: Path
) -> None:
    settings = redis_settings.model_copy(update={"certs_dir": certs})
    got: asyncio.Queue[tuple[Any, str, str]] = asyncio.Queue()
    herald = await redis_workers(
        "exprsn-herald",
        settings=settings,
        setup=lambda w: w.on("post:created", lambda data, meta: got.put_nowait((data, meta.source, meta.trust))),
    )
    timeline = await redis_workers("exprsn-timeline", settings=settings)
    spark = await redis_workers("exprsn-spark", settings=settings)  # no credential: shared key, still allowed
    assert timeline.identity.credential is not None and spark.identity.credential is None

    await timeline.emit("post:created", {"id": 1}, target="exprsn-herald")
    assert await asyncio.wait_for(got.get(), 5) == ({"id": 1}, "exprsn-timeline", "credential")
    await spark.emit("post:created", {"id": 2}, target="exprsn-herald")
    assert await asyncio.wait_for(got.get(), 5) == ({"id": 2}, "exprsn-spark", "shared-key")

    # The shared key's holder claims to be timeline: a perfectly signed HS256 envelope.
    forger = BrokerTokenManager(service_name="exprsn-timeline", settings=redis_settings)
    forged = forger.sign_envelope("post:created", {"id": 666}, target="exprsn-herald")
    await redis_client.publish("ipc:exprsn-herald", forged.encode())
    # A stolen countersignature from another message does not fit this token either.
    real = timeline.build_envelope("post:created", {"id": 3}, target="exprsn-herald")
    lifted = forger.sign_envelope("post:created", {"id": 667}, target="exprsn-herald")
    lifted.metadata["credential"] = real.metadata["credential"]
    await redis_client.publish("ipc:exprsn-herald", lifted.encode())

    await spark.emit("post:created", {"id": 4}, target="exprsn-herald")  # still served
    assert await asyncio.wait_for(got.get(), 5) == ({"id": 4}, "exprsn-spark", "shared-key")
    assert got.empty()
    assert herald.stats.rejected["CREDENTIAL_REQUIRED"] == 1
    assert herald.stats.rejected["CREDENTIAL_INVALID"] == 1
