"""The Redis transport against a real redis-server: wire format, keys, stores, faults."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from redis.asyncio import Redis

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.errors import NotConnectedError, TransportError
from exprsn_ipc.protocol.constants import ENVELOPE_KEYS, TOKEN_CLAIMS
from exprsn_ipc.protocol.tokens import decode_unverified
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport import create_transport
from exprsn_ipc.transport.redis.transport import (
    REVOCATION_CHANNEL,
    RedisRateLimiter,
    RedisTransport,
    redact_url,
)

from ...conftest import RedisWorkerFactory
from ...redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis

WAIT = 5.0


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT) -> None:
    """Poll ``check`` until true (for state that has no event to await), bounded."""

    async def poll() -> None:
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def node_setex(client: Redis, key: str, ttl: int, value: str | bytes) -> None:
    """SETEX exactly as the Node original sends it."""
    await client.execute_command("SETEX", key, ttl, value)


@pytest.fixture
def settings(redis_settings: Settings) -> Settings:
    return redis_settings


@pytest.fixture
def raw(redis_client: Redis) -> Redis:
    return redis_client


@pytest.fixture
def workers(redis_workers: RedisWorkerFactory) -> RedisWorkerFactory:
    return redis_workers


def transport_of(worker: IPCWorker) -> RedisTransport:
    assert isinstance(worker.transport, RedisTransport)
    return worker.transport


# Wire format ------------------------------------------------------------------------
async def test_envelope_on_the_wire_is_the_originals(workers: Any, raw: Redis, settings: Settings) -> None:
    pubsub = raw.pubsub()
    await pubsub.subscribe("ipc:exprsn-auth")
    assert (await pubsub.get_message(timeout=WAIT))["type"] == "subscribe"
    timeline = await workers("exprsn-timeline")
    await workers("exprsn-auth")
    result = await timeline.emit("user:validate", {"userId": 7}, target="exprsn-auth", metadata={"trace": "t1"})
    assert result.channel == "ipc:exprsn-auth"
    assert result.receivers == 2  # the auth worker and this raw subscriber
    message = await pubsub.get_message(timeout=WAIT)
    while message is not None and message["type"] != "message":
        message = await pubsub.get_message(timeout=WAIT)
    assert message is not None
    assert message["channel"] == b"ipc:exprsn-auth"
    assert message["data"] == result.envelope.encode()
    body = json.loads(message["data"])
    assert tuple(body) == ENVELOPE_KEYS
    assert body["data"] == {"userId": 7}
    assert body["source"] == "exprsn-timeline"
    assert body["metadata"] == {"trace": "t1"}
    key = settings.broker_key_bytes
    claims = jwt.decode(body["token"], key, algorithms=["HS256"])
    assert tuple(claims) == TOKEN_CLAIMS
    assert claims["metadata"] == {"event": "user:validate", "trace": "t1"}
    await pubsub.aclose()


async def test_broadcast_goes_to_the_broadcast_channel(workers: Any, raw: Redis) -> None:
    pubsub = raw.pubsub()
    await pubsub.subscribe("ipc:broadcast")
    await pubsub.get_message(timeout=WAIT)
    timeline = await workers("exprsn-timeline")
    result = await timeline.emit("post:created", {"id": 1})
    assert result.channel == "ipc:broadcast"
    assert result.receivers == 2  # itself (it receives its own broadcasts) and the raw subscriber
    message = await pubsub.get_message(timeout=WAIT)
    assert message is not None and message["data"] == result.envelope.encode()
    await pubsub.aclose()


# Registry and discovery -------------------------------------------------------------
async def test_registry_entry_key_ttl_and_fields(workers: Any, raw: Redis) -> None:
    worker = await workers("exprsn-timeline")
    key = "ipc:data:services:exprsn-timeline"
    entry = json.loads(await raw.get(key))
    assert list(entry)[:6] == ["name", "namespace", "pid", "hostname", "registered", "lastSeen"]
    assert entry["name"] == "exprsn-timeline"
    assert entry["namespace"] == "ipc"
    assert entry["pid"] == os.getpid()
    assert entry["hostname"] == socket.gethostname()
    assert entry["registered"] <= entry["lastSeen"] <= time.time() * 1000 + 1
    assert 0 < await raw.ttl(key) <= 60
    await worker.disconnect()
    assert await raw.exists(key) == 0


async def test_registry_is_refreshed(settings: Settings, workers: Any, raw: Redis) -> None:
    transport = RedisTransport(settings)
    transport.registry_refresh_s = 0.05
    await workers("exprsn-timeline", transport=transport)
    key = "ipc:data:services:exprsn-timeline"
    first = json.loads(await raw.get(key))["lastSeen"]
    await raw.expire(key, 5)

    async def refreshed() -> bool:
        return json.loads(await raw.get(key))["lastSeen"] > first and await raw.ttl(key) > 5

    await eventually(refreshed)


async def test_close_keeps_an_entry_written_by_another_process(workers: Any, raw: Redis) -> None:
    worker = await workers("exprsn-timeline")
    key = "ipc:data:services:exprsn-timeline"
    other = {
        "name": "exprsn-timeline",
        "namespace": "ipc",
        "pid": 1,
        "hostname": "elsewhere",
        "registered": 1,
        "lastSeen": 2,
    }
    await raw.set(key, json.dumps(other), ex=60)
    await worker.disconnect()
    assert json.loads(await raw.get(key)) == other


async def test_active_services_scans_and_skips_bad_entries(workers: Any, raw: Redis) -> None:
    await workers("exprsn-timeline")
    auth = await workers("exprsn-auth")
    await raw.set("ipc:data:services:broken", b"not json", ex=60)
    await raw.set("ipc:data:services:list", b"[1,2]", ex=60)
    await raw.set("ipc:data:services:nameless", b'{"pid": 3}', ex=60)
    node_entry = {"name": "exprsn-node", "namespace": "ipc", "pid": 9, "hostname": "n", "registered": 1, "lastSeen": 1}
    await raw.set("ipc:data:services:exprsn-node", json.dumps(node_entry), ex=60)
    for n in range(300):  # more than one SCAN step
        await raw.set(f"ipc:data:token:filler{n}", b"{}", ex=60)
    await raw.config_resetstat()
    services = await auth.get_active_services()
    assert [s["name"] for s in services] == ["exprsn-auth", "exprsn-node", "exprsn-timeline"]
    stats = await raw.info("commandstats")
    assert "cmdstat_scan" in stats
    assert "cmdstat_keys" not in stats


# Revocation --------------------------------------------------------------------------
async def test_revocation_is_written_where_the_original_reads_it(workers: Any, raw: Redis) -> None:
    a = await workers("exprsn-timeline")
    b = await workers("exprsn-auth")
    token = a.tokens.generate_token({"x": 1}, target_service="exprsn-auth")
    token_id = decode_unverified(token)["id"]
    metadata = {
        "id": token_id,
        "source": "exprsn-timeline",
        "target": "exprsn-auth",
        "operation": "ipc",
        "created": 1,
        "expires": 2,
        "stateful": False,
        "revoked": False,
    }
    await raw.set(f"ipc:data:token:{token_id}", json.dumps(metadata), ex=300)
    assert await a.tokens.revoke_token(token_id) is True
    record = json.loads(await raw.get(f"ipc:data:token:{token_id}"))
    assert record == {**metadata, "revoked": True, "revokedAt": record["revokedAt"]}
    assert abs(record["revokedAt"] - time.time() * 1000) < 60_000
    assert 86_000 < await raw.ttl(f"ipc:data:token:{token_id}") <= 86_400
    assert a.tokens.is_revoked(token_id)
    await eventually(lambda: b.tokens.is_revoked(token_id))


async def test_revocation_without_a_metadata_record(workers: Any, raw: Redis) -> None:
    a = await workers("exprsn-timeline")
    assert await a.tokens.revoke_token("f" * 32, ttl=120) is True
    record = json.loads(await raw.get("ipc:data:token:" + "f" * 32))
    assert record["id"] == "f" * 32 and record["revoked"] is True
    assert 0 < await raw.ttl("ipc:data:token:" + "f" * 32) <= 120


async def test_revocation_notice_reaches_other_workers_cache(workers: Any, raw: Redis) -> None:
    b = await workers("exprsn-auth")
    await raw.publish(REVOCATION_CHANNEL, json.dumps({"id": "abc123", "ttl": 30}))
    await raw.publish(REVOCATION_CHANNEL, b"bare-id")
    await eventually(lambda: b.tokens.is_revoked("abc123") and b.tokens.is_revoked("bare-id"))


async def test_node_style_revocation_is_honoured(workers: Any, raw: Redis) -> None:
    sender = await workers("exprsn-timeline")
    victim = await workers("exprsn-auth")
    assert transport_of(victim).revocation_mode == "keyspace"
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    victim.on("error", errors.put_nowait)
    envelope = sender.build_envelope("user:validate", {"n": 1}, target="exprsn-auth")
    token_id = decode_unverified(envelope.token or "")["id"]
    # What the original's revokeToken leaves behind (raw SETEX of the record).
    await node_setex(raw, f"ipc:data:token:{token_id}", 86400, json.dumps({"id": token_id, "revoked": True}))
    await eventually(lambda: victim.tokens.is_revoked(token_id))
    await sender.transport.publish("ipc:exprsn-auth", envelope.encode())
    assert (await asyncio.wait_for(errors.get(), WAIT)).code == "TOKEN_REVOKED"
    # a record that is not revoked (what a Node emit writes) is not cached
    await node_setex(raw, "ipc:data:token:live", 300, json.dumps({"id": "live", "revoked": False}))
    await node_setex(raw, "ipc:data:token:marker", 300, json.dumps({"id": "marker", "revoked": True}))
    await eventually(lambda: victim.tokens.is_revoked("marker"))
    assert not victim.tokens.is_revoked("live")


async def test_revoked_records_are_loaded_on_connect(workers: Any, raw: Redis) -> None:
    await node_setex(raw, "ipc:data:token:old1", 500, json.dumps({"id": "old1", "revoked": True}))
    await node_setex(raw, "ipc:data:token:old2", 500, json.dumps({"id": "old2", "revoked": False}))
    worker = await workers("exprsn-auth")
    assert worker.tokens.is_revoked("old1")
    assert not worker.tokens.is_revoked("old2")


async def test_scan_fallback_when_config_is_refused(redis_server: RedisServer, redis_url: str, raw: Redis) -> None:
    # A user without CONFIG, like many managed Redis offerings.
    await raw.acl_setuser(
        "noconfig", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-config"]
    )
    url = f"redis://noconfig:pw@127.0.0.1:{redis_server.port}/0"
    settings = make_test_settings(redis_url=url, ipc_transport="redis")
    transport = RedisTransport(settings)
    transport.revocation_scan_s = 0.05
    worker = IPCWorker("exprsn-auth", settings=settings, transport=transport)
    try:
        await worker.start()
        assert transport.revocation_mode == "scan"
        await node_setex(raw, "ipc:data:token:late", 300, json.dumps({"id": "late", "revoked": True}))
        await eventually(lambda: worker.tokens.is_revoked("late"))
    finally:
        await worker.disconnect()
        await raw.acl_deluser("noconfig")


async def test_keyspace_flags_are_merged_not_replaced(workers: Any, raw: Redis) -> None:
    await raw.config_set("notify-keyspace-events", "Elg")
    await workers("exprsn-auth")
    reply = await raw.config_get("notify-keyspace-events")
    flags = next(iter(reply.values()))
    flags = flags.decode() if isinstance(flags, bytes) else flags
    assert set(flags) >= set("Elg") | {"K", "$"}
    await raw.config_set("notify-keyspace-events", "")


# State store -------------------------------------------------------------------------
async def test_state_store_uses_the_originals_keys(workers: Any, raw: Redis) -> None:
    worker = await workers("exprsn-auth")
    await worker.tokens.set_state("t1", {"step": 2, "items": [1, 2]})
    assert json.loads(await raw.get("ipc:data:state:t1")) == {"step": 2, "items": [1, 2]}
    assert await raw.ttl("ipc:data:state:t1") == -1  # plain SET, no TTL
    assert await worker.tokens.get_state("t1") == {"step": 2, "items": [1, 2]}
    await raw.set("ipc:data:state:node", json.dumps({"from": "node"}))
    assert await worker.tokens.get_state("node") == {"from": "node"}
    assert await worker.tokens.delete_state("t1") is True
    assert await worker.tokens.delete_state("t1") is False
    assert await worker.tokens.get_state("t1") is None


# Rate limiter ------------------------------------------------------------------------
async def test_rate_limiter_is_atomic_and_shared(redis_url: str, raw: Redis) -> None:
    window = 3_600_000
    now = int(time.time() * 1000)
    if window - now % window < 2000:  # do not straddle a window boundary
        await asyncio.sleep((window - now % window) / 1000 + 0.01)
    index = int(time.time() * 1000) // window
    other = Redis.from_url(redis_url)
    try:
        one = RedisRateLimiter(raw, max_requests=10, window_ms=window)
        two = RedisRateLimiter(other, max_requests=10, window_ms=window)
        decisions = await asyncio.gather(*[(one if n % 2 else two).hit("timeline") for n in range(50)])
        assert sum(d.allowed for d in decisions) == 10
        assert sorted(d.count for d in decisions) == list(range(1, 51))
        assert all(d.allowed == (d.count <= 10) for d in decisions)
        assert (await one.hit("auth")).allowed  # buckets are per key
        assert await two.snapshot() == {"timeline": 50, "auth": 1}
        keys = sorted([k.decode() async for k in raw.scan_iter(match="ipc:router:ratelimit:*")])
        assert keys == [f"ipc:router:ratelimit:{index}:auth", f"ipc:router:ratelimit:{index}:timeline"]
    finally:
        await other.aclose()


async def test_rate_limit_window_is_never_extended(raw: Redis) -> None:
    window = 500
    limiter = RedisRateLimiter(raw, max_requests=3, window_ms=window, prefix="test:rl:")
    now = int(time.time() * 1000)
    if now % window > 100:  # start near the beginning of a window, so the test fits in it
        await asyncio.sleep((window - now % window) / 1000 + 0.005)
    index = int(time.time() * 1000) // window
    first = await limiter.hit("svc")
    key = limiter.window_key("svc", index)
    ttl_after_first = await raw.pttl(key)
    assert 0 < ttl_after_first <= first.reset_ms + 1000
    decisions = [await limiter.hit("svc") for _ in range(5)]
    assert [d.count for d in decisions] == [2, 3, 4, 5, 6]
    assert [d.allowed for d in decisions] == [True, True, False, False, False]
    ttl_after_more = await raw.pttl(key)
    assert 0 < ttl_after_more <= ttl_after_first  # later hits never extend the expiry

    async def next_window_starts_at_one() -> bool:
        decision = await limiter.hit("svc")
        return decision.count == 1 and decision.allowed

    await eventually(next_window_starts_at_one, timeout=3)


# Lifecycle and faults ----------------------------------------------------------------
async def test_publish_before_connect_and_close_twice(settings: Settings) -> None:
    transport = RedisTransport(settings)
    with pytest.raises(NotConnectedError):
        await transport.publish("ipc:broadcast", b"{}")
    assert not transport.connected
    await transport.close()
    await transport.close()


async def test_connecting_to_nothing_fails_fast() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_test_settings(redis_url=url, ipc_transport="redis")
    worker = IPCWorker("exprsn-auth", settings=settings, transport=RedisTransport(settings))
    started = time.monotonic()
    with pytest.raises(TransportError, match="cannot connect"):
        await worker.start()
    assert time.monotonic() - started < 5
    assert not worker.started


async def test_close_cancels_every_task(workers: Any) -> None:
    worker = await workers("exprsn-auth")
    transport = transport_of(worker)
    tasks = list(transport._tasks)
    assert len(tasks) == 5 and not any(t.done() for t in tasks)
    await worker.disconnect()
    assert all(t.done() for t in tasks)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("redis-")]
    assert not transport.connected
    with pytest.raises(NotConnectedError):
        await transport.publish("ipc:broadcast", b"{}")


async def test_extra_subscriptions(workers: Any, raw: Redis) -> None:
    sender = await workers("exprsn-timeline")
    worker = await workers("exprsn-auth")
    seen: asyncio.Queue[Any] = asyncio.Queue()
    worker.on("custom:event", lambda data, meta: seen.put_nowait((data, meta.channel)))
    await worker.subscribe("ipc:custom")
    envelope = sender.build_envelope("custom:event", {"a": 1}, target="exprsn-auth")
    assert await raw.publish("ipc:custom", envelope.encode()) == 1
    assert await asyncio.wait_for(seen.get(), WAIT) == ({"a": 1}, "ipc:custom")
    await worker.unsubscribe("ipc:custom")
    assert await raw.publish("ipc:custom", envelope.encode()) == 0
    assert "ipc:custom" not in transport_of(worker).channels


async def test_redis_restart_under_a_running_worker() -> None:
    server = RedisServer().start()
    try:
        settings = make_test_settings(redis_url=server.url, ipc_transport="redis")
        receiver = IPCWorker("exprsn-auth", settings=settings, transport=RedisTransport(settings))
        sender = IPCWorker("exprsn-timeline", settings=settings, transport=RedisTransport(settings))
        errors: asyncio.Queue[Exception] = asyncio.Queue()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        receiver.on("error", errors.put_nowait)
        receiver.on("user:validate", lambda data, meta: inbox.put_nowait(data))
        async with receiver, sender:
            rt, st = transport_of(receiver), transport_of(sender)
            await sender.emit("user:validate", {"n": 0}, target="exprsn-auth")
            assert await asyncio.wait_for(inbox.get(), WAIT) == {"n": 0}

            await asyncio.to_thread(server.stop)
            error = await asyncio.wait_for(errors.get(), WAIT)
            assert isinstance(error, TransportError)
            assert not rt.connected
            started = time.monotonic()
            with pytest.raises(TransportError):
                await sender.emit("user:validate", {"n": 1}, target="exprsn-auth")
            assert time.monotonic() - started < 3

            await receiver.subscribe("ipc:extra")  # remembered during the outage

            await asyncio.to_thread(server.start)  # same port, empty data, default config
            await asyncio.wait_for(rt.wait_connected(), 15)
            await asyncio.wait_for(st.wait_connected(), 15)
            assert errors.empty()  # one report per outage, not one per retry
            assert rt.reconnects == 1
            result = await sender.emit("user:validate", {"n": 2}, target="exprsn-auth")
            assert result.receivers == 1
            assert await asyncio.wait_for(inbox.get(), WAIT) == {"n": 2}
            # resubscribed (with the channel added meanwhile), re-registered, and
            # revocation sync re-armed on the fresh server
            async with Redis.from_url(server.url) as raw:
                counts = dict(await raw.pubsub_numsub("ipc:exprsn-auth", "ipc:extra", REVOCATION_CHANNEL))
                assert counts == {b"ipc:exprsn-auth": 1, b"ipc:extra": 1, REVOCATION_CHANNEL.encode(): 2}
                assert await raw.exists("ipc:data:services:exprsn-auth") == 1
                await node_setex(raw, "ipc:data:token:after", 300, json.dumps({"id": "after", "revoked": True}))
            await eventually(lambda: receiver.tokens.is_revoked("after"))
    finally:
        server.close()


async def test_a_killed_subscription_connection_is_restored(workers: Any, raw: Redis) -> None:
    receiver = await workers("exprsn-auth")
    sender = await workers("exprsn-timeline")
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    receiver.on("error", errors.put_nowait)
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    receiver.on("user:validate", lambda data, meta: inbox.put_nowait(data))
    assert await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
    assert isinstance(await asyncio.wait_for(errors.get(), WAIT), TransportError)
    await asyncio.wait_for(transport_of(receiver).wait_connected(), WAIT)
    await asyncio.wait_for(transport_of(sender).wait_connected(), WAIT)
    await sender.emit("user:validate", {"after": "kill"}, target="exprsn-auth")
    assert await asyncio.wait_for(inbox.get(), WAIT) == {"after": "kill"}
    assert errors.empty()


async def test_idle_pings_keep_a_healthy_connection_and_detect_a_silent_one(settings: Settings, raw: Redis) -> None:
    transport = RedisTransport(settings)
    transport.idle_ping_s = 0.1
    worker = IPCWorker("exprsn-auth", settings=settings, transport=transport)
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    worker.on("error", errors.put_nowait)
    async with worker:
        await raw.config_resetstat()

        async def pinged_twice() -> bool:
            stats = await raw.info("commandstats")
            return int(stats.get("cmdstat_ping", {}).get("calls", 0)) >= 2

        await eventually(pinged_twice)
        assert errors.empty() and transport.connected
        # Redis stops answering (every client paused): the missing PONG gives it away.
        await raw.execute_command("CLIENT", "PAUSE", 800, "ALL")
        error = await asyncio.wait_for(errors.get(), WAIT)
        assert isinstance(error, TransportError) and "PING" in str(error)
        await asyncio.wait_for(transport.wait_connected(), WAIT)
        assert transport.reconnects == 1 and errors.empty()


# Configuration -----------------------------------------------------------------------
def test_url_comes_from_settings() -> None:
    settings = make_test_settings(
        redis_host="10.0.0.5", redis_port=6380, redis_password="s3cret/x", redis_db=2, ipc_transport="redis"
    )
    transport = create_transport(settings)
    assert isinstance(transport, RedisTransport)
    assert transport.url == "redis://:s3cret%2Fx@10.0.0.5:6380/2"
    assert transport.safe_url == "redis://:***@10.0.0.5:6380/2"
    assert transport.db == 2
    kwargs = transport.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["password"]) == ("10.0.0.5", 6380, "s3cret/x")


def test_rediss_url_uses_tls() -> None:
    from redis.asyncio.connection import SSLConnection

    settings = make_test_settings(
        redis_url="rediss://user:pw@redis.example:6380/1?ssl_cert_reqs=required", ipc_transport="redis"
    )
    transport = RedisTransport(settings)
    assert transport.client.connection_pool.connection_class is SSLConnection
    assert transport.safe_url == "rediss://user:***@redis.example:6380/1?ssl_cert_reqs=required"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


# Rate limiter: several hits at once (the Bridge's batches) ------------------------------
async def test_rate_limiter_counts_a_cost_at_once_and_keeps_the_first_expiry(raw: Redis) -> None:
    window = 3_600_000
    now = int(time.time() * 1000)
    if window - now % window < 10_000:  # leave at least 10 s of the window for the test
        await asyncio.sleep((window - now % window) / 1000 + 0.01)
    limiter = RedisRateLimiter(raw, max_requests=5, window_ms=window, prefix="test:cost:")
    index = int(time.time() * 1000) // window
    key = limiter.window_key("svc", index)

    first = await limiter.hit("svc", cost=3)
    assert (first.count, first.allowed, first.remaining, first.limit) == (3, True, 2, 5)
    assert await raw.get(key) == b"3"
    ttl_after_first = await raw.pttl(key)
    # Set by this hit (which created the key): the rest of the window plus a second.
    assert first.reset_ms <= ttl_after_first <= first.reset_ms + 1000

    second = await limiter.hit("svc")
    assert (second.count, second.allowed, second.remaining) == (4, True, 1)
    ttl_after_second = await raw.pttl(key)
    assert 0 < ttl_after_second <= ttl_after_first

    # A later hit does not touch the expiry at all: shortened by hand, it stays short.
    assert await raw.pexpire(key, 5000)
    third = await limiter.hit("svc", cost=2)
    assert (third.count, third.allowed, third.remaining) == (6, False, 0)
    assert 0 < await raw.pttl(key) <= 5000
    assert await raw.get(key) == b"6"

    # Per key: a cost over the limit on a fresh key is counted whole and refused.
    other = await limiter.hit("other", cost=7)
    assert (other.count, other.allowed) == (7, False)
    assert 0 < await raw.pttl(limiter.window_key("other", index)) <= other.reset_ms + 1000
    assert await limiter.snapshot() == {"svc": 6, "other": 7}
