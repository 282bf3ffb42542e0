"""Calls the Bridge makes for Socket.IO clients go to one replica too, chosen by load.

``ipc:request`` and CRUD on a resource a service serves are published by the Bridge
itself (``bridge/requests.py``); with three replicas behind it, each call runs once,
and concurrent calls spread over the replicas.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from exprsn_ipc import IPCWorker

from .conftest import BridgeFixture

pytestmark = pytest.mark.timeout(30)


async def test_client_requests_and_crud_run_on_one_replica_each(bridge: BridgeFixture) -> None:
    calls: Counter[str] = Counter()
    created: Counter[str] = Counter()

    class Posts:
        def __init__(self, owner: IPCWorker) -> None:
            self.owner = owner

        async def create(self, data: Any, meta: Any) -> dict[str, Any]:
            created[self.owner.instance_id] += 1
            return {"id": 1, **data}

    def setup(worker: IPCWorker) -> None:
        async def validate(data: Any, meta: Any) -> dict[str, Any]:
            calls[worker.instance_id] += 1
            await asyncio.sleep(0.01)  # long enough for concurrent calls to overlap
            return {"n": data["n"]}

        worker.on("user:validate", validate)
        worker.resource("posts")(Posts(worker))

    replicas = [await bridge.worker("exprsn-auth", setup=setup) for _ in range(3)]
    client = await bridge.connect("/ipc/timeline")
    answers = await asyncio.gather(
        *(
            client.call("ipc:request", {"event": "user:validate", "payload": {"n": n}, "target": "exprsn-auth"})
            for n in range(30)
        )
    )
    assert sorted(a["data"]["n"] for a in answers) == list(range(30))
    for n in range(6):
        made = await client.call("ipc:create", {"resource": "posts", "data": {"n": n}})
        assert made["success"] is True, made
    for replica in replicas:
        await asyncio.wait_for(replica.idle(), 5)
    assert sum(calls.values()) == 30
    assert len(calls) == 3 and min(calls.values()) >= 5, calls
    assert sum(created.values()) == 6
