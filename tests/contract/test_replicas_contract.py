"""Replicas, on every binding: one replica handles each call, shared handlers run once per event.

Each test starts several workers of one service (replicas) on the same bus and counts
handler executions: a request, a CRUD call or a JSONLex call runs on exactly one
replica; a plain event reaches every replica, as in the original; a handler
registered with ``shared=True`` (or a named group) runs on one replica per event.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.protocol.constants import channel_for

from .bindings import Harness

WAIT = 5.0
AUTH = "exprsn-auth"

pytestmark = pytest.mark.timeout(60)


async def replicas(harness: Harness, n: int, calls: Counter[str], **kwargs: Any) -> list[IPCWorker]:
    """``n`` replicas of exprsn-auth answering ``user:validate``, each counting its calls."""
    started = []
    for _ in range(n):
        worker = IPCWorker(AUTH, settings=harness.settings, transport=harness.make_transport(), **kwargs)

        def validate(data: Any, meta: Any, worker: IPCWorker = worker) -> dict[str, Any]:
            calls[worker.instance_id] += 1
            return {"valid": True, "n": data["n"]}

        worker.on("user:validate", validate)
        harness.workers.append(worker)
        started.append(await worker.start())
    return started


async def settle(*workers: IPCWorker) -> None:
    for worker in workers:
        await asyncio.wait_for(worker.idle(), WAIT)


async def test_exactly_one_replica_handles_each_request(harness: Harness) -> None:
    calls: Counter[str] = Counter()
    auth = await replicas(harness, 3, calls)
    caller = await harness.worker("exprsn-timeline")
    answers = [await caller.request(AUTH, "user:validate", {"n": n}, timeout=WAIT) for n in range(12)]
    # Concurrent calls too: chosen by load, so they spread.
    answers += await asyncio.gather(
        *(caller.request(AUTH, "user:validate", {"n": n}, timeout=WAIT) for n in range(12, 42))
    )
    assert [a["n"] for a in answers] == list(range(42))
    await settle(*auth)
    assert sum(calls.values()) == 42
    assert len(calls) == 3, calls
    assert min(calls.values()) >= 5, calls  # 30 concurrent calls over 3 replicas, chosen by load


async def test_exactly_one_replica_serves_each_crud_and_jsonlex_call(harness: Harness) -> None:
    created: Counter[str] = Counter()
    evaluated: list[str] = []
    workers = []
    for _ in range(3):
        worker = IPCWorker(AUTH, settings=harness.settings, transport=harness.make_transport())

        class Posts:
            def __init__(self, owner: IPCWorker) -> None:
                self.owner = owner

            async def create(self, data: Any, meta: Any) -> dict[str, Any]:
                created[self.owner.instance_id] += 1
                return {"id": sum(created.values()), **data}

        worker.resource("posts")(Posts(worker))
        worker.serve_jsonlex()
        harness.workers.append(worker)
        workers.append(await worker.start())
    caller = await harness.worker("exprsn-timeline")
    for n in range(6):
        item = await caller.create("posts", {"n": n}, target=AUTH, timeout=WAIT)
        assert item["n"] == n
    for n in range(6):
        expression = {"__jsonlex": True, "expr": {"$gte": [{"$var": "n"}, 3]}}
        assert await caller.execute_jsonlex(expression, {"n": n}, target=AUTH, timeout=WAIT) is (n >= 3)
    await settle(*workers)
    assert sum(created.values()) == 6
    for worker in workers:
        evaluated += [worker.instance_id] * worker.stats.received_by_event.get("jsonlex:execute", 0)
    assert len(evaluated) == 6


async def test_a_gone_replica_is_skipped_at_once(harness: Harness) -> None:
    calls: Counter[str] = Counter()
    one, two = await replicas(harness, 2, calls)
    caller = await harness.worker("exprsn-timeline")
    await caller.request(AUTH, "user:validate", {"n": 0}, timeout=WAIT)  # the caller now knows both
    # A crash: it stops receiving without leaving, so its instance record is still there.
    await one.transport.stop_receiving()
    for n in range(1, 9):
        assert (await caller.request(AUTH, "user:validate", {"n": n}, timeout=WAIT))["n"] == n
    await settle(two)
    assert calls[one.instance_id] <= 1
    assert sum(calls.values()) == 9


async def test_a_call_on_the_service_channel_is_answered_by_one_replica(harness: Harness) -> None:
    """A caller that knows no replica (an older one, or any publisher) sends to ipc:<service>."""
    calls: Counter[str] = Counter()
    auth = await replicas(harness, 3, calls)
    caller = await harness.worker("exprsn-timeline")
    for n in range(5):
        envelope = caller.build_envelope(
            "user:validate", {"n": n}, target=AUTH, operation="request", metadata={"requestId": f"legacy-{n}"}
        )
        assert await caller.transport.publish(channel_for(AUTH), envelope.encode()) != 0
    await asyncio.wait_for(_until(lambda: sum(calls.values()) >= 5), WAIT)
    await settle(*auth)
    assert sum(calls.values()) == 5


async def test_plain_events_reach_every_replica_and_shared_handlers_one(harness: Harness) -> None:
    every: Counter[str] = Counter()
    shared: Counter[str] = Counter()
    grouped: Counter[str] = Counter()
    workers = []
    for service in (AUTH, AUTH, AUTH, "exprsn-herald"):
        worker = IPCWorker(service, settings=harness.settings, transport=harness.make_transport())
        worker.on("post:created", lambda d, m, w=worker: every.update([w.instance_id]))
        if service == AUTH:
            worker.on("post:created", lambda d, m, w=worker: shared.update([w.instance_id]), shared=True)
        # One group across two services: one of all four runs it.
        worker.on("post:created", lambda d, m, w=worker: grouped.update([w.instance_id]), shared="notifiers")
        harness.workers.append(worker)
        workers.append(await worker.start())
    sender = await harness.worker("exprsn-timeline")
    for n in range(5):
        await sender.emit("post:created", {"n": n}, target="broadcast")
    await asyncio.wait_for(_until(lambda: sum(every.values()) >= 20), WAIT)
    await settle(*workers)
    assert sum(every.values()) == 20
    assert sum(shared.values()) == 5
    assert sum(grouped.values()) == 5


async def test_discovery_lists_each_replica(harness: Harness) -> None:
    auth = await replicas(harness, 2, Counter())
    caller = await harness.worker("exprsn-timeline")
    records = await caller.transport.instances(AUTH)
    assert sorted(r["id"] for r in records) == sorted(w.instance_id for w in auth)
    for record in records:
        assert record["service"] == AUTH
        assert {"inFlight", "heartbeat", "version", "address", "hostname", "pid"} <= set(record), record
    # A replica that leaves is no longer listed, and is not chosen.
    await auth[0].transport.leave()
    assert [r["id"] for r in await caller.transport.instances(AUTH)] == [auth[1].instance_id]


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.01)
