"""Batching between IPC workers and the Bridge: ``ipc:publish_batch``, ``ipc:messages``
and the answer-less ``ipc:send``.

Each emit of a batch still gets its own receiver count or its own error; each
envelope of a batch is checked on its own; the whole batch is counted once
against the rate limit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import BridgeStats
from exprsn_ipc.errors import AuthError, EnvelopeError, IPCError, RateLimitError, TokenError
from exprsn_ipc.protocol.constants import BATCH_MAX_ITEMS
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport
from exprsn_ipc.worker.handlers import MessageMeta

from .conftest import WAIT, BridgeFixture, Client, eventually, recorder, served_bridge

ENVELOPE_PROTOCOL = "exprsn-ipc/1"
SENDER = "exprsn-timeline"
LISTENER = "exprsn-herald"
HOUR_MS = 3_600_000


async def start_of_a_long_window(margin_ms: int = 2000) -> None:
    """Wait (at most ``margin_ms``) if the next rate-limit window boundary is too close."""
    now_ms = time.time() * 1000
    if HOUR_MS - now_ms % HOUR_MS < margin_ms:
        await asyncio.sleep((HOUR_MS - now_ms % HOUR_MS) / 1000 + 0.01)


def transport_of(worker: IPCWorker) -> BridgeTransport:
    assert isinstance(worker.transport, BridgeTransport)
    return worker.transport


def signed(service: str, event: str, data: Any, *, target: str = LISTENER, settings: Any) -> str:
    """An encoded envelope signed by ``service`` with ``settings``' key."""
    manager = BrokerTokenManager(service_name=service, settings=settings)
    return manager.sign_envelope(event, data, target=target).encode().decode("utf-8")


def tampered(service: str, *, settings: Any) -> str:
    """An envelope whose data was changed after signing (the token no longer matches)."""
    envelope = BrokerTokenManager(service_name=service, settings=settings).sign_envelope(
        "batch:item", {"n": 1}, target=LISTENER
    )
    envelope.data = {"n": 2}
    return envelope.encode().decode("utf-8")


async def envelope_client(bridge: BridgeFixture, service: str) -> Client:
    """A raw Socket.IO client connected the way a bridge-transport worker is (envelope mode)."""
    namespace = f"/ipc/{service}"
    return await bridge.client(namespace).connect({"token": bridge.token(service), "protocol": ENVELOPE_PROTOCOL})


async def listener(bridge: BridgeFixture, event: str = "batch:item") -> tuple[IPCWorker, asyncio.Queue[Any]]:
    """A bridge-transport worker for :data:`LISTENER` queueing the data of ``event``."""
    queues: list[asyncio.Queue[tuple[Any, MessageMeta]]] = []
    worker = await bridge.worker(LISTENER, setup=lambda w: queues.append(recorder(w, event)))
    return worker, queues[0]


async def next_data(queue: asyncio.Queue[tuple[Any, MessageMeta]]) -> Any:
    data, _ = await asyncio.wait_for(queue.get(), WAIT)
    return data


def rejected_of(bridge: BridgeFixture, service: str) -> dict[str, int]:
    counts = bridge.bridge.stats.per_service.get(service, {})
    return {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:") and v}


async def still_serving(bridge: BridgeFixture, queue: asyncio.Queue[tuple[Any, MessageMeta]]) -> None:
    """A fresh worker's emit reaches the listener, and is the next thing it gets: nothing
    else was delivered to it in between (the Bridge keeps each socket's order)."""
    probe = await bridge.worker("exprsn-spark")
    result = await probe.emit("batch:item", {"probe": True}, target=LISTENER)
    assert result.receivers == 1
    assert (await next_data(queue)) == {"probe": True}
    await probe.disconnect()


# Many emits at once --------------------------------------------------------------------
async def test_concurrent_emits_are_batched_and_arrive_once_in_order(
    bridge: BridgeFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 300
    received: list[int] = []
    sources: set[str] = set()
    all_in = asyncio.Event()
    done = asyncio.Event()

    def setup(worker: IPCWorker) -> None:
        def on_item(data: Any, meta: MessageMeta) -> None:
            sources.add(meta.source)
            received.append(data["seq"])
            if len(received) >= count:
                all_in.set()

        worker.on("load:item", on_item)
        worker.on("load:done", lambda data, meta: done.set())

    receiver = await bridge.worker(LISTENER, setup=setup)
    sender = await bridge.worker(SENDER)

    # Spy on what the sender's transport asks the Bridge (event, number of envelopes).
    calls: list[tuple[str, int]] = []
    sending = transport_of(sender)
    original_call = sending.call

    async def spy_call(event: str, data: Any) -> Any:
        calls.append((event, len(data) if isinstance(data, list) else 1))
        return await original_call(event, data)

    monkeypatch.setattr(sending, "call", spy_call)

    # Spy on the packets that reach the receiver's Socket.IO client.
    receiving = transport_of(receiver)
    link = receiving._link
    assert link is not None
    packets: list[tuple[str, int]] = []
    on_messages = link.handlers["ipc:messages"]
    on_message = link.handlers["ipc:message"]

    async def spy_messages(items: Any) -> None:
        packets.append(("ipc:messages", len(items)))
        await on_messages(items)

    async def spy_message(channel: Any, raw: Any) -> None:
        packets.append(("ipc:message", 1))
        await on_message(channel, raw)

    link.on("ipc:messages", spy_messages)
    link.on("ipc:message", spy_message)

    stats: BridgeStats = bridge.bridge.stats
    routed_before, delivered_before = stats.routed, stats.delivered

    results = await asyncio.gather(*[sender.emit("load:item", {"seq": n}, target=LISTENER) for n in range(count)])

    assert [r.receivers for r in results] == [1] * count
    assert [r.envelope.data["seq"] for r in results] == list(range(count))
    await asyncio.wait_for(all_in.wait(), WAIT)

    # Batches were really used, each within the limit, and every emit was sent exactly once.
    assert "ipc:publish_batch" in {event for event, _ in calls}, calls
    assert {event for event, _ in calls} <= {"ipc:publish", "ipc:publish_batch"}
    assert sum(n for _, n in calls) == count
    assert len(calls) < count
    assert all(n <= BATCH_MAX_ITEMS for _, n in calls)

    # The Bridge's counters: 300 routed, 300 delivered to the listener's socket.
    assert stats.routed - routed_before == count
    assert stats.per_service[SENDER]["sent"] == count

    async def all_delivered() -> bool:
        return stats.delivered - delivered_before == count

    await eventually(all_delivered, what="the Bridge to count 300 deliveries")
    assert stats.per_service[LISTENER]["delivered"] == count

    # A marker sent after everything: anything duplicated would have arrived before it.
    await sender.emit("load:done", {}, target=LISTENER)
    await asyncio.wait_for(done.wait(), WAIT)
    assert received == list(range(count))
    assert sources == {SENDER}
    assert "ipc:messages" in {event for event, _ in packets}, packets
    assert sum(n for _, n in packets) == count + 1  # the 300 items and the marker
    assert max(n for _, n in packets) > 1
    assert sender.stats.sent == count + 1
    assert receiver.stats.received_by_event["load:item"] == count


async def test_each_emit_of_a_batch_gets_its_own_rate_limit_error() -> None:
    await start_of_a_long_window()
    async with served_bridge(ipc_rate_max=5, ipc_rate_window=HOUR_MS) as bridge:
        _, queue = await listener(bridge)
        sender = await bridge.worker(SENDER)
        outcomes = await asyncio.gather(
            *[sender.emit("batch:item", {"n": n}, target=LISTENER) for n in range(8)], return_exceptions=True
        )
        # The first emit goes alone (ipc:publish, one count), the other seven as one batch
        # of which four fit in the limit.
        ok = [o for o in outcomes if not isinstance(o, BaseException)]
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert [o.receivers for o in ok] == [1] * 5, outcomes
        assert all(isinstance(o, RateLimitError) and o.code == "RATE_LIMIT_EXCEEDED" for o in failed), outcomes
        assert len(failed) == 3
        assert all(isinstance(o, RateLimitError) for o in outcomes[5:]), outcomes
        assert [(await next_data(queue))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert rejected_of(bridge, SENDER) == {"RATE_LIMIT_EXCEEDED": 3}


# One bad envelope in a batch -----------------------------------------------------------
async def test_bad_items_of_a_batch_fail_alone(bridge: BridgeFixture) -> None:
    _, queue = await listener(bridge)
    client = await envelope_client(bridge, SENDER)
    settings = bridge.settings
    other_key = make_test_settings()  # a different signing key
    batch: list[Any] = [
        signed(SENDER, "batch:item", {"n": 1}, settings=settings),
        signed("exprsn-auth", "batch:item", {"n": 99}, settings=settings),  # someone else's envelope
        signed(SENDER, "batch:item", {"n": 2}, settings=settings),
        signed(SENDER, "batch:item", {"n": 98}, settings=other_key),  # forged signature
        tampered(SENDER, settings=settings),
        42,
        "not json",
        signed(SENDER, "batch:item", {"n": 3}, settings=settings),
    ]

    replies = await client.call("ipc:publish_batch", batch)

    assert isinstance(replies, list)
    assert len(replies) == len(batch)
    assert [r["success"] for r in replies] == [True, False, True, False, False, False, False, True]
    assert [r.get("receivers") for r in replies if r["success"]] == [1, 1, 1]
    assert [r.get("error") for r in replies] == [
        None,
        AuthError.code,
        None,
        "INVALID_TOKEN",
        "TOKEN_MISMATCH",
        EnvelopeError.code,
        EnvelopeError.code,
        None,
    ]
    assert replies[1]["message"] == f"{SENDER} may not publish as exprsn-auth"
    assert all(isinstance(r["message"], str) and r["message"] for r in replies if not r["success"])

    # The good ones arrive, in order, and nothing else does.
    assert [(await next_data(queue))["n"] for _ in range(3)] == [1, 2, 3]
    await still_serving(bridge, queue)
    assert rejected_of(bridge, SENDER) == {
        "UNAUTHORIZED": 1,
        "INVALID_TOKEN": 1,
        "TOKEN_MISMATCH": 1,
        "INVALID_MESSAGE": 2,
    }
    assert bridge.bridge.stats.per_service[SENDER]["sent"] == 3


async def test_malformed_batches_are_refused_whole(bridge: BridgeFixture) -> None:
    _, queue = await listener(bridge)
    client = await envelope_client(bridge, SENDER)
    good = signed(SENDER, "batch:item", {"n": 1}, settings=bridge.settings)
    routed_before = bridge.bridge.stats.routed
    malformed: list[Any] = [
        None,
        good,  # one envelope, but not in a list
        {"0": good},
        5,
        [],
        [good] * (BATCH_MAX_ITEMS + 1),
    ]
    for body in malformed:
        reply = await client.call("ipc:publish_batch", body)
        assert isinstance(reply, dict), (body, reply)
        assert reply["success"] is False
        assert reply["error"] == EnvelopeError.code == "INVALID_MESSAGE"
        assert str(BATCH_MAX_ITEMS) in reply["message"]
    # Nothing of the refused batches was routed, not even the valid envelopes in them.
    assert bridge.bridge.stats.routed == routed_before
    assert queue.empty()

    # A non-string item fails alone; the rest of the batch goes through.
    replies = await client.call("ipc:publish_batch", [{"event": "x"}, good, ["nested"]])
    assert [r["success"] for r in replies] == [False, True, False]
    assert replies[0]["error"] == replies[2]["error"] == "INVALID_MESSAGE"
    assert "strings" in replies[0]["message"]
    assert replies[1]["receivers"] == 1
    assert (await next_data(queue)) == {"n": 1}

    # A batch of exactly the maximum size is fine.
    full = await client.call(
        "ipc:publish_batch",
        [signed(SENDER, "batch:item", {"n": n}, settings=bridge.settings) for n in range(BATCH_MAX_ITEMS)],
    )
    assert [r["success"] for r in full] == [True] * BATCH_MAX_ITEMS
    assert [(await next_data(queue))["n"] for _ in range(BATCH_MAX_ITEMS)] == list(range(BATCH_MAX_ITEMS))

    assert rejected_of(bridge, SENDER) == {"INVALID_MESSAGE": len(malformed) + 2}
    assert bridge.bridge.stats.rejected["INVALID_MESSAGE"] == len(malformed) + 2
    await still_serving(bridge, queue)
    # The refusing client itself is still served too (with a fresh envelope: `good` was accepted once).
    single = await client.call("ipc:publish", signed(SENDER, "batch:item", {"n": 2}, settings=bridge.settings))
    assert single == {"success": True, "receivers": 1}


async def test_a_batch_is_counted_once_against_the_rate_limit() -> None:
    await start_of_a_long_window()
    async with served_bridge(ipc_rate_max=5, ipc_rate_window=HOUR_MS) as bridge:
        _, queue = await listener(bridge)
        client = await envelope_client(bridge, SENDER)
        batch = [signed(SENDER, "batch:item", {"n": n}, settings=bridge.settings) for n in range(8)]

        replies = await client.call("ipc:publish_batch", batch)

        assert replies[:5] == [{"success": True, "receivers": 1}] * 5
        assert (
            replies[5:]
            == [{"success": False, "error": "RATE_LIMIT_EXCEEDED", "message": "IPC rate limit exceeded"}] * 3
        )
        assert [(await next_data(queue))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert rejected_of(bridge, SENDER) == {"RATE_LIMIT_EXCEEDED": 3}
        assert bridge.bridge.stats.rejected["RATE_LIMIT_EXCEEDED"] == 3
        assert bridge.bridge.stats.per_service[SENDER]["sent"] == 5

        # The window is used up: a lone publish is refused, a fully refused batch too.
        single = await client.call("ipc:publish", batch[0])
        assert single["error"] == "RATE_LIMIT_EXCEEDED"
        again = await client.call("ipc:publish_batch", batch[:2])
        assert [r["error"] for r in again] == ["RATE_LIMIT_EXCEEDED"] * 2
        stats = await bridge.stats()
        assert stats["counters"]["perService"][SENDER]["rejected"] == {"RATE_LIMIT_EXCEEDED": 6}
        assert stats["rateLimits"]["usage"][SENDER] == 11
        assert queue.empty()


# ipc:send (no answer; refusals come back as ipc:error) ------------------------------------
async def test_ipc_send_from_a_raw_client(bridge: BridgeFixture) -> None:
    _, queue = await listener(bridge)
    client = await envelope_client(bridge, SENDER)
    good = signed(SENDER, "batch:item", {"n": 1}, settings=bridge.settings)
    foreign = signed("exprsn-auth", "batch:item", {"n": 2}, settings=bridge.settings)

    await client.emit("ipc:send", good)
    assert (await next_data(queue)) == {"n": 1}

    await client.emit("ipc:send", foreign)
    (error,) = await client.event("ipc:error")
    assert error == {"success": False, "error": AuthError.code, "message": f"{SENDER} may not publish as exprsn-auth"}

    await client.emit("ipc:send", 42)
    (error,) = await client.event("ipc:error")
    assert error["error"] == "INVALID_MESSAGE"

    # The accepted send produced no error; the refused ones were not delivered.
    assert [event for event, _ in client.received if event == "ipc:error"] == []
    await still_serving(bridge, queue)
    assert rejected_of(bridge, SENDER) == {"UNAUTHORIZED": 1, "INVALID_MESSAGE": 1}


async def test_a_refused_send_becomes_a_local_error_event(bridge: BridgeFixture) -> None:
    _, queue = await listener(bridge)
    errors: asyncio.Queue[Any] = asyncio.Queue()
    worker = await bridge.worker(SENDER, setup=lambda w: w.on("error", errors.put_nowait))
    transport = transport_of(worker)
    channel = f"ipc:{LISTENER}"
    assert worker.stats.transport_errors == 0

    foreign = signed("exprsn-auth", "batch:item", {"n": 2}, settings=bridge.settings).encode()
    assert await transport.send(channel, foreign) is None
    error = await asyncio.wait_for(errors.get(), WAIT)
    assert isinstance(error, AuthError)
    assert error.code == "UNAUTHORIZED"
    assert str(error) == f"{SENDER} may not publish as exprsn-auth"
    assert worker.stats.transport_errors == 1

    assert await transport.send(channel, tampered(SENDER, settings=bridge.settings).encode()) is None
    error = await asyncio.wait_for(errors.get(), WAIT)
    assert isinstance(error, TokenError)
    assert error.code == "TOKEN_MISMATCH"
    assert worker.stats.transport_errors == 2

    # A good one is delivered and reports nothing.
    good = worker.build_envelope("batch:item", {"n": 1}, target=LISTENER).encode()
    assert await transport.send(channel, good) is None
    assert (await next_data(queue)) == {"n": 1}
    assert errors.empty()
    assert worker.stats.transport_errors == 2
    assert queue.empty()


async def test_request_replies_travel_as_ipc_send(bridge: BridgeFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def double(data: Any, meta: MessageMeta) -> dict[str, Any]:
        return {"value": data["n"] * 2, "askedBy": meta.source}

    async def triple(data: Any, meta: MessageMeta) -> int:
        await asyncio.sleep(0)  # answered from a task, not at once
        return int(data["n"]) * 3

    def fail(data: Any, meta: MessageMeta) -> None:
        raise ValueError("no such number")

    def setup(worker: IPCWorker) -> None:
        worker.on("math:double", double)
        worker.on("math:triple", triple)
        worker.on("math:fail", fail)

    server = await bridge.worker(LISTENER, setup=setup)
    sends: list[int | None] = []
    transport = transport_of(server)
    original_send = transport.send

    async def spy_send(channel: str, raw: bytes) -> int | None:
        result = await original_send(channel, raw)
        sends.append(result)
        return result

    monkeypatch.setattr(transport, "send", spy_send)
    asker = await bridge.worker(SENDER)

    assert await asker.request(LISTENER, "math:double", {"n": 21}, timeout=WAIT) == {"value": 42, "askedBy": SENDER}
    assert await asker.request(LISTENER, "math:triple", {"n": 5}, timeout=WAIT) == 15
    with pytest.raises(IPCError, match="no such number"):
        await asker.request(LISTENER, "math:fail", {}, timeout=WAIT)

    # Many at once: the requests leave in batches, the replies as ipc:send.
    answers = await asyncio.gather(*[asker.request(LISTENER, "math:double", {"n": n}, timeout=WAIT) for n in range(50)])
    assert [a["value"] for a in answers] == [2 * n for n in range(50)]

    async def all_sent() -> bool:
        return len(sends) == 53

    await eventually(all_sent, what="the server's 53 replies to be sent")
    assert sends == [None] * 53  # None: sent with ipc:send, without waiting for a count
    assert server.stats.transport_errors == 0
    assert asker.stats.transport_errors == 0


async def test_batches_fit_a_small_message_limit() -> None:
    limit = 8192  # the Bridge accepts websocket messages of up to 4 * 8192 bytes
    async with served_bridge(ipc_max_message_bytes=limit) as bridge:
        _, queue = await listener(bridge)
        sender = await bridge.worker(SENDER, call_timeout=2.0)
        pad = "x" * 3000  # each signed envelope is about 6.5 KB: within the limit
        outcomes = await asyncio.gather(
            *[sender.emit("batch:item", {"n": n, "pad": pad}, target=LISTENER) for n in range(20)],
            return_exceptions=True,
        )
        assert [repr(o) for o in outcomes if isinstance(o, BaseException)] == []
        results = [o for o in outcomes if not isinstance(o, BaseException)]
        assert all(len(r.envelope.encode()) < limit for r in results)
        assert [r.receivers for r in results] == [1] * 20
        assert [(await next_data(queue))["n"] for _ in range(20)] == list(range(20))
