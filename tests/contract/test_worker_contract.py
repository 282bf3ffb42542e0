"""Worker behaviour every transport must provide (memory, bridge, redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exprsn_ipc import (
    EnvelopeError,
    IPCWorker,
    NoReceiversError,
    PayloadTooLargeError,
    RemoteError,
    RequestTimeoutError,
)
from exprsn_ipc.errors import TokenError

from .bindings import Harness

WAIT = 5.0


class Inbox:
    """Collects (data, meta) of one event on one worker."""

    def __init__(self, worker: IPCWorker, event: str) -> None:
        self.items: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
        worker.on(event, self._handler)

    async def _handler(self, data: Any, meta: Any) -> None:
        await self.items.put((data, meta))

    async def get(self) -> tuple[Any, Any]:
        return await asyncio.wait_for(self.items.get(), WAIT)

    def empty(self) -> bool:
        return self.items.empty()


async def test_targeted_event_reaches_only_its_target(harness: Harness) -> None:
    timeline = await harness.worker("exprsn-timeline")
    auth = await harness.worker("exprsn-auth")
    herald = await harness.worker("exprsn-herald")
    on_auth = Inbox(auth, "user:validate")
    on_herald = Inbox(herald, "user:validate")
    result = await timeline.emit("user:validate", {"userId": 7}, target="exprsn-auth")
    assert result.receivers >= 1
    data, meta = await on_auth.get()
    assert data == {"userId": 7}
    assert meta.source == "exprsn-timeline"
    assert meta.token["source"] == "exprsn-timeline"
    assert meta.token["target"] == "exprsn-auth"
    assert meta.channel == "ipc:exprsn-auth"
    assert meta.message.event == "user:validate"
    # herald received nothing: a broadcast sent after the targeted event arrives first there
    marker = Inbox(herald, "test:marker")
    await timeline.emit("test:marker", {})
    await marker.get()
    assert on_herald.empty()


async def test_broadcast_reaches_everyone_including_the_sender(harness: Harness) -> None:
    workers = [await harness.worker(name) for name in ("exprsn-timeline", "exprsn-auth", "exprsn-herald")]
    inboxes = [Inbox(w, "post:created") for w in workers]
    result = await workers[0].emit("post:created", {"id": "p1", "content": "hello"}, target="broadcast")
    assert result.receivers >= 1
    assert result.envelope.source == "exprsn-timeline"
    for inbox in inboxes:
        data, meta = await inbox.get()
        assert data == {"id": "p1", "content": "hello"}
        assert meta.source == "exprsn-timeline"


async def test_event_without_data(harness: Harness) -> None:
    a = await harness.worker("exprsn-timeline")
    inbox = Inbox(a, "test:ping")
    result = await a.emit("test:ping")
    assert "data" not in result.envelope.to_dict()
    data, _ = await inbox.get()
    assert data is None


async def test_request_reply_returns_the_handler_result(harness: Harness) -> None:
    auth = await harness.worker("exprsn-auth")
    timeline = await harness.worker("exprsn-timeline")

    @auth.on("user:validate")
    async def validate(data: Any, meta: Any) -> dict[str, Any]:
        return {"userId": data["userId"], "valid": data["sessionId"] == "s1", "asked_by": meta.source}

    reply = await timeline.request("exprsn-auth", "user:validate", {"userId": 1, "sessionId": "s1"}, timeout=WAIT)
    assert reply == {"userId": 1, "valid": True, "asked_by": "exprsn-timeline"}


async def test_sync_handler_result_and_none(harness: Harness) -> None:
    svc = await harness.worker("exprsn-moderator")
    caller = await harness.worker("exprsn-timeline")
    svc.on("content:check", lambda data, meta: None)
    assert await caller.request("exprsn-moderator", "content:check", {"x": 1}, timeout=WAIT) is None


async def test_request_to_nobody_fails_immediately(harness: Harness) -> None:
    caller = await harness.worker("exprsn-timeline")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoReceiversError):
        await caller.request("exprsn-nobody", "user:validate", {}, timeout=30)
    assert loop.time() - started < 5


async def test_request_timeout(harness: Harness) -> None:
    slow = await harness.worker("exprsn-auth")
    caller = await harness.worker("exprsn-timeline")
    release = asyncio.Event()

    @slow.on("user:validate")
    async def never(data: Any, meta: Any) -> None:
        await release.wait()

    with pytest.raises(RequestTimeoutError):
        await caller.request("exprsn-auth", "user:validate", {}, timeout=0.3)
    release.set()


async def test_request_handler_error_and_missing_handler(harness: Harness) -> None:
    svc = await harness.worker("exprsn-auth")
    caller = await harness.worker("exprsn-timeline")

    @svc.on("user:validate")
    def boom(data: Any, meta: Any) -> None:
        raise ValueError("bad session")

    with pytest.raises(RemoteError) as info:
        await caller.request("exprsn-auth", "user:validate", {}, timeout=WAIT)
    assert info.value.code == "HANDLER_ERROR"
    assert "bad session" in str(info.value)
    with pytest.raises(RemoteError) as info:
        await caller.request("exprsn-auth", "user:unknown", {}, timeout=WAIT)
    assert info.value.code == "NO_HANDLER"


async def test_handler_error_is_reported_and_worker_keeps_going(harness: Harness) -> None:
    svc = await harness.worker("exprsn-herald")
    sender = await harness.worker("exprsn-timeline")
    errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    svc.on("handler-error", errors.put_nowait)

    @svc.on("notification:trigger")
    def fail(data: Any, meta: Any) -> None:
        if data["n"] == 1:
            raise RuntimeError("smtp down")

    inbox = Inbox(svc, "notification:trigger")
    await sender.emit("notification:trigger", {"n": 1}, target="exprsn-herald")
    report = await asyncio.wait_for(errors.get(), WAIT)
    assert report["event"] == "notification:trigger"
    assert isinstance(report["error"], RuntimeError)
    assert "fail" in report["handler"]
    await sender.emit("notification:trigger", {"n": 2}, target="exprsn-herald")
    seen = [(await inbox.get())[0], (await inbox.get())[0]]
    assert seen == [{"n": 1}, {"n": 2}]
    assert svc.stats.handler_errors == 1


async def test_crud_through_a_resource(harness: Harness) -> None:
    svc = await harness.worker("exprsn-timeline")
    caller = await harness.worker("exprsn-auth")

    @svc.resource("posts")
    class Posts:
        def __init__(self) -> None:
            self.items: dict[int, dict[str, Any]] = {}

        async def create(self, data: dict[str, Any], meta: Any) -> dict[str, Any]:
            item = {"id": len(self.items) + 1, **data, "by": meta.source}
            self.items[item["id"]] = item
            return item

        def read(self, query: Any, meta: Any) -> Any:
            if isinstance(query, int):
                return self.items.get(query)
            return list(self.items.values())

        def update(self, id: int, data: dict[str, Any], meta: Any) -> dict[str, Any]:
            self.items[id].update(data)
            return self.items[id]

        def delete(self, id: int, meta: Any) -> bool:
            return self.items.pop(id, None) is not None

    created = await caller.create("posts", {"content": "hi"}, target="exprsn-timeline")
    assert created == {"id": 1, "content": "hi", "by": "exprsn-auth"}
    assert await caller.read("posts", 1, target="exprsn-timeline") == created
    updated = await caller.update("posts", 1, {"content": "edited"}, target="exprsn-timeline")
    assert updated["content"] == "edited"
    assert await caller.read("posts", target="exprsn-timeline") == [updated]
    assert await caller.delete("posts", 1, target="exprsn-timeline") is True
    with pytest.raises(RemoteError) as info:
        await caller.read("comments", target="exprsn-timeline")
    assert info.value.code == "RESOURCE_NOT_FOUND"


async def test_jsonlex_is_served_where_enabled(harness: Harness) -> None:
    bridge = await harness.worker("exprsn-bridge", aliases=("bridge",))
    bridge.serve_jsonlex()
    caller = await harness.worker("exprsn-timeline")
    expression = {
        "__jsonlex": True,
        "expr": {
            "fullName": {"$concat": [{"$var": "firstName"}, " ", {"$var": "lastName"}]},
            "age": {"$var": "age"},
            "isAdult": {"$gte": [{"$var": "age"}, 18]},
        },
    }
    context = {"firstName": "John", "lastName": "Doe", "age": 25}
    assert await caller.execute_jsonlex(expression, context) == {"fullName": "John Doe", "age": 25, "isAdult": True}
    # the original's default target, "bridge", reaches the same worker
    assert (await caller.execute_jsonlex(expression, context, target="bridge"))["isAdult"] is True
    with pytest.raises(RemoteError) as info:
        await caller.execute_jsonlex({"__jsonlex": True, "expr": {"$nope": 1}}, {})
    assert info.value.code == "JSONLEX_ERROR"


async def test_signed_acks_reach_ack_handlers(harness: Harness) -> None:
    sender = await harness.worker("exprsn-timeline")
    receiver = await harness.worker("exprsn-herald")
    Inbox(receiver, "notification:trigger")
    acks = Inbox(sender, "ack")
    result = await sender.emit("notification:trigger", {"n": 1}, target="exprsn-herald", require_ack=True)
    data, meta = await acks.get()
    # The message's token, or its messageId where the lane carries it without one.
    original = result.envelope.token or result.envelope.metadata["messageId"]
    assert data == {"originalEvent": "notification:trigger", "originalId": original}
    assert meta.source == "exprsn-herald"
    assert meta.token["source"] == "exprsn-herald"


async def test_local_events_stay_local(harness: Harness) -> None:
    a = await harness.worker("exprsn-timeline")
    b = await harness.worker("exprsn-auth")
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []
    b_ready: list[Any] = []
    a.on("sent", sent.append)
    b.on("received", received.append)
    b.on("ready", lambda: b_ready.append(True))
    inbox = Inbox(b, "post:created")
    await a.emit("post:created", {"id": 1})
    await inbox.get()
    assert sent and sent[0]["event"] == "post:created"
    assert sent[0]["channel"] == "ipc:broadcast"
    # b's "received" fires for the post only; a's "sent" never reached b
    marker = Inbox(b, "test:marker")
    await a.emit("test:marker", {})
    await marker.get()
    assert [r["event"] for r in received] == ["post:created", "test:marker"]
    assert b_ready == []  # registered after start: no ready event travelled from a
    with pytest.raises(EnvelopeError):
        await a.emit("ready", {})
    with pytest.raises(EnvelopeError):
        await a.emit("disconnect", {})


async def test_bad_emits_are_refused_before_sending(harness: Harness) -> None:
    a = await harness.worker("exprsn-timeline")
    with pytest.raises(EnvelopeError):
        await a.emit("bad name with spaces", {})
    with pytest.raises(EnvelopeError):
        await a.emit("post:created", {}, target="Not A Service!")
    with pytest.raises(EnvelopeError):
        await a.emit("post:created", {"x": object()})
    with pytest.raises(PayloadTooLargeError):
        await a.emit("post:created", {"blob": "x" * (harness.settings.ipc_max_message_bytes + 1)})
    assert a.stats.sent == 0


async def test_tampered_and_forged_messages_are_rejected(harness: Harness) -> None:
    """Rebuilt envelopes whose fields differ from their signed claims are rejected."""
    sender = await harness.worker("exprsn-timeline")
    victim = await harness.worker("exprsn-auth")
    inbox = Inbox(victim, "user:validate")
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    victim.on("error", errors.put_nowait)

    # Signed as on Redis (a lane with identity at the connection sends none of its own).
    good = sender.tokens.sign_envelope("user:validate", {"userId": 1}, target="exprsn-auth")
    tampered = [
        _replace(good, data={"userId": 2}),
        _replace(good, event="user:deleted"),
        _replace(good, source="exprsn-ca"),
        _replace(good, target="broadcast"),
        _replace(good, token=good.token[:-3] + ("AAA" if not good.token.endswith("AAA") else "BBB")),
        _replace(good, token=None),
    ]
    for envelope in tampered:
        await harness.inject(_channel(envelope.target), envelope.encode())
    codes = [await asyncio.wait_for(errors.get(), WAIT) for _ in tampered]
    assert all(isinstance(e, TokenError) for e in codes)
    assert sum(victim.stats.rejected.values()) == len(tampered)
    assert victim.stats.rejected["TOKEN_MISMATCH"] == 4
    # the untouched original is still accepted
    await harness.inject(_channel(good.target), good.encode())
    data, _ = await inbox.get()
    assert data == {"userId": 1}
    assert inbox.empty()


async def test_expired_and_revoked_tokens_are_rejected(harness: Harness) -> None:
    sender = await harness.worker("exprsn-timeline")
    victim = await harness.worker("exprsn-auth")
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    victim.on("error", errors.put_nowait)
    inbox = Inbox(victim, "user:validate")

    expired = sender.build_envelope("user:validate", {"n": 1}, target="exprsn-auth", ttl=-10)
    await harness.inject("ipc:exprsn-auth", expired.encode())
    assert (await asyncio.wait_for(errors.get(), WAIT)).code == "TOKEN_EXPIRED"

    revoked = sender.tokens.sign_envelope("user:validate", {"n": 2}, target="exprsn-auth")
    from exprsn_ipc.protocol.tokens import decode_unverified

    token_id = decode_unverified(revoked.token or "")["id"]
    assert await sender.tokens.revoke_token(token_id) is True
    await _wait_revoked(victim, token_id)
    await harness.inject("ipc:exprsn-auth", revoked.encode())
    assert (await asyncio.wait_for(errors.get(), WAIT)).code == "TOKEN_REVOKED"
    assert victim.stats.rejected["TOKEN_EXPIRED"] == 1
    assert victim.stats.rejected["TOKEN_REVOKED"] == 1
    assert inbox.empty()


async def test_malformed_bytes_are_rejected_and_counted(harness: Harness) -> None:
    await harness.worker("exprsn-timeline")
    victim = await harness.worker("exprsn-auth")
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    victim.on("error", errors.put_nowait)
    for raw in (b"not json", b"[1,2]", b'{"event": 5, "source": "x", "target": "exprsn-auth"}'):
        await harness.inject("ipc:exprsn-auth", raw)
    codes = {(await asyncio.wait_for(errors.get(), WAIT)).code for _ in range(3)}
    assert codes == {"INVALID_MESSAGE"}
    assert victim.stats.rejected["INVALID_MESSAGE"] == 3


async def test_message_for_another_service_is_dropped_before_verification(harness: Harness) -> None:
    sender = await harness.worker("exprsn-timeline")
    victim = await harness.worker("exprsn-auth")
    errors: list[Exception] = []
    victim.on("error", errors.append)
    calls = 0
    original = victim.tokens.verify_envelope

    def counting(envelope: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(envelope)

    victim.tokens.verify_envelope = counting  # type: ignore[method-assign]
    # Signed for exprsn-herald but published on auth's channel: must be dropped, not verified.
    stray = sender.tokens.sign_envelope("user:validate", {}, target="exprsn-herald")
    forged = _replace(stray, token="garbage")
    await harness.inject("ipc:exprsn-auth", forged.encode())
    marker = Inbox(victim, "test:marker")
    signed_marker = sender.tokens.sign_envelope("test:marker", {}, target="exprsn-auth")
    await harness.inject("ipc:exprsn-auth", signed_marker.encode())
    await marker.get()
    assert victim.stats.dropped == 1
    assert calls == 1  # only the marker was verified
    assert errors == []


async def test_active_services_lists_running_workers(harness: Harness) -> None:
    await harness.worker("exprsn-timeline")
    auth = await harness.worker("exprsn-auth")
    services = await auth.get_active_services()
    names = {s["name"] for s in services}
    assert {"exprsn-timeline", "exprsn-auth"} <= names
    entry = next(s for s in services if s["name"] == "exprsn-auth")
    assert set(entry) >= {"name", "namespace", "pid", "hostname", "registered", "lastSeen"}


async def test_handler_concurrency_is_bounded(harness: Harness) -> None:
    svc = await harness.worker("exprsn-herald", max_concurrency=3)
    sender = await harness.worker("exprsn-timeline")
    running = 0
    peak = 0
    release = asyncio.Event()
    started = asyncio.Queue[int]()

    @svc.on("work:item")
    async def work(data: Any, meta: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        started.put_nowait(data["n"])
        await release.wait()
        running -= 1

    for n in range(10):
        await sender.emit("work:item", {"n": n}, target="exprsn-herald")
    first = [await asyncio.wait_for(started.get(), WAIT) for _ in range(3)]
    assert len(first) == 3
    assert started.empty()  # the 4th waits for a free slot
    release.set()
    rest = [await asyncio.wait_for(started.get(), WAIT) for _ in range(7)]
    assert sorted(first + rest) == list(range(10))
    assert peak == 3


async def test_disconnect_drains_running_handlers(harness: Harness) -> None:
    svc = await harness.worker("exprsn-herald")
    sender = await harness.worker("exprsn-timeline")
    entered = asyncio.Event()
    finished: list[int] = []
    disconnected: list[bool] = []
    svc.on("disconnected", lambda _=None: disconnected.append(True))

    @svc.on("work:item")
    async def work(data: Any, meta: Any) -> None:
        entered.set()
        await asyncio.sleep(0.2)  # the in-flight work a drain must wait for
        finished.append(data["n"])

    await sender.emit("work:item", {"n": 1}, target="exprsn-herald")
    await asyncio.wait_for(entered.wait(), WAIT)
    await svc.disconnect()
    assert finished == [1]
    assert disconnected == [True]
    assert not svc.started


def _replace(envelope: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(envelope, **changes)


def _channel(target: str) -> str:
    return f"ipc:{target}"


async def _wait_revoked(worker: IPCWorker, token_id: str) -> None:
    async def poll() -> None:
        while not worker.tokens.is_revoked(token_id):
            await asyncio.sleep(0.01)  # revocation propagation has no event to await on every transport

    await asyncio.wait_for(poll(), WAIT)


# Handled without a task: plain-function handlers, replies -------------------------
async def test_plain_function_handlers_see_every_event_in_order(harness: Harness) -> None:
    svc = await harness.worker("exprsn-herald")
    sender = await harness.worker("exprsn-timeline")
    seen: list[int] = []
    all_in = asyncio.Event()

    def record(data: Any, meta: Any) -> None:
        seen.append(data["n"])
        if len(seen) == 200:
            all_in.set()

    svc.on("work:item", record)
    await asyncio.gather(*[sender.emit("work:item", {"n": n}, target="exprsn-herald") for n in range(200)])
    await asyncio.wait_for(all_in.wait(), WAIT)
    assert seen == list(range(200))
    assert svc.stats.handled == 200


async def test_plain_function_returning_a_coroutine_is_awaited_and_counts_as_running(harness: Harness) -> None:
    svc = await harness.worker("exprsn-herald")
    sender = await harness.worker("exprsn-timeline")
    entered = asyncio.Event()
    release = asyncio.Event()
    finished: asyncio.Queue[int] = asyncio.Queue()

    async def work(data: Any) -> None:
        entered.set()
        await release.wait()
        finished.put_nowait(data["n"])

    svc.on("work:item", lambda data, meta: work(data))  # not an async function, returns a coroutine
    await sender.emit("work:item", {"n": 1}, target="exprsn-herald")
    await asyncio.wait_for(entered.wait(), WAIT)
    assert not svc.is_idle  # the coroutine still runs: idle() and drains wait for it
    release.set()
    await asyncio.wait_for(svc.idle(), WAIT)
    assert finished.get_nowait() == 1
    await sender.emit("work:item", {"n": 2}, target="exprsn-herald")  # now on the task path
    assert await asyncio.wait_for(finished.get(), WAIT) == 2
    assert svc.stats.handled == 2


async def test_plain_function_request_handlers_answer_every_way(harness: Harness) -> None:
    svc = await harness.worker("exprsn-auth")
    caller = await harness.worker("exprsn-timeline")

    async def later(data: Any) -> Any:
        await asyncio.sleep(0)
        return {"later": data["n"]}

    def fail(data: Any, meta: Any) -> None:
        raise KeyError("no such user")

    svc.on("user:echo", lambda data, meta: {"n": data["n"], "from": meta.source})
    svc.on("user:later", lambda data, meta: later(data))
    svc.on("user:fail", fail)
    svc.on("user:set", lambda data, meta: {1, 2})  # not JSON: the caller is told
    replies = await asyncio.gather(
        *[caller.request("exprsn-auth", "user:echo", {"n": n}, timeout=WAIT) for n in range(50)]
    )
    assert replies == [{"n": n, "from": "exprsn-timeline"} for n in range(50)]
    assert await caller.request("exprsn-auth", "user:later", {"n": 7}, timeout=WAIT) == {"later": 7}
    with pytest.raises(RemoteError) as failed:
        await caller.request("exprsn-auth", "user:fail", {}, timeout=WAIT)
    assert failed.value.code == "HANDLER_ERROR" and "no such user" in str(failed.value)
    with pytest.raises(RemoteError) as untravelled:
        await caller.request("exprsn-auth", "user:set", {}, timeout=WAIT)
    assert untravelled.value.code == EnvelopeError.code and "JSON" in str(untravelled.value)
    assert svc.stats.handler_errors == 1
