"""The access policy at workers, for messages arriving over Redis (issue 14, item 3)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.errors import RemoteError
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import wait_for_messages

pytestmark = pytest.mark.timeout(30)

POLICY = """
default = "deny"
[[rules]]
name = "posts-from-timeline"
kind = "emit"
sources = ["timeline"]
events = ["post:*"]
[[rules]]
name = "validate"
kind = "request"
events = ["user:validate"]
"""


async def test_a_worker_enforces_the_policy_on_what_redis_brings(
    redis_workers: Any, redis_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policed = redis_settings.model_copy(update={"ipc_policy": path})
    got: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def setup(worker: IPCWorker) -> None:
        worker.on("post:created", lambda data, meta: got.put_nowait((meta.source, "post")))
        worker.on("user:validate", lambda data, meta: {"valid": True})
        worker.on("user:delete", lambda data, meta: "deleted")

    herald = await redis_workers("exprsn-herald", settings=policed, setup=setup)
    # The senders hold the shared key and no policy: only the receiver decides.
    timeline = await redis_workers("exprsn-timeline")
    spark = await redis_workers("exprsn-spark")

    await spark.emit("post:created", {"id": 1}, target="exprsn-herald")
    await timeline.emit("post:created", {"id": 2}, target="exprsn-herald")
    assert await asyncio.wait_for(got.get(), 5) == ("exprsn-timeline", "post")
    with pytest.raises(RemoteError, match="'default'") as denied:
        await spark.request("exprsn-herald", "user:delete", {}, timeout=5)  # answered, not timed out
    assert denied.value.code == "FORBIDDEN"
    assert await spark.request("exprsn-herald", "user:validate", {}, timeout=5) == {"valid": True}
    await wait_for_messages(herald)
    assert got.empty()
    assert herald.stats.policy_denied == {"default": 2}
    assert herald.stats.rejected["FORBIDDEN"] == 2
