"""Least-privilege Redis users: the rules ``exprsn-ipc redis acl`` prints, loaded into a real
redis-server, and services running as those users."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError
from typer.testing import CliRunner

from exprsn_ipc import IPCWorker, MessageMeta, Settings
from exprsn_ipc.bridge.backend.redis import RedisBackend
from exprsn_ipc.cli import app
from exprsn_ipc.errors import TransportError
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.redis.durable import DurableOptions
from exprsn_ipc.transport.redis.keys import dlq_key, stream_key
from exprsn_ipc.transport.redis.transport import RedisTransport

from ...redis_server import RedisServer

HERALD = "exprsn-herald"
TIMELINE = "exprsn-timeline"
FAST = DurableOptions(reclaim_interval_s=0.2, idle_timeout_s=0.5, block_ms=300)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def acl_server() -> Iterator[tuple[RedisServer, dict[str, str]]]:
    """A private redis-server with the printed users loaded; yields it and the passwords by user."""
    result = CliRunner().invoke(app, ["redis", "acl", "-s", TIMELINE, "-s", HERALD])
    assert result.exit_code == 0, result.output
    commands = [shlex.split(line) for line in result.output.splitlines() if line.startswith("ACL SETUSER")]
    assert [c[2] for c in commands] == [TIMELINE, HERALD, "exprsn-bridge"]
    server = RedisServer().start()
    try:
        passwords: dict[str, str] = {}
        with redis.Redis(port=server.port) as admin:
            for command in commands:
                admin.execute_command(*command)
                passwords[command[2]] = next(arg[1:] for arg in command if arg.startswith(">"))
        yield server, passwords
    finally:
        server.close()


_BASE = make_test_settings(ipc_transport="redis")  # one broker key for every service here


def _settings(server: RedisServer, user: str, password: str) -> Settings:
    return _BASE.model_copy(
        update={"redis_url": server.url, "redis_username": user, "redis_password": SecretStr(password)}
    )


@pytest.fixture
async def workers() -> AsyncIterator[list[IPCWorker]]:
    started: list[IPCWorker] = []
    try:
        yield started
    finally:
        for worker in reversed(started):
            await worker.disconnect()


async def test_each_service_works_as_its_own_user_and_is_refused_the_others_keys(
    acl_server: tuple[RedisServer, dict[str, str]], workers: list[IPCWorker], caplog: pytest.LogCaptureFixture
) -> None:
    server, passwords = acl_server
    herald_settings = _settings(server, HERALD, passwords[HERALD])
    timeline_settings = _settings(server, TIMELINE, passwords[TIMELINE])
    received: asyncio.Queue[Any] = asyncio.Queue()
    herald = IPCWorker(HERALD, settings=herald_settings, transport=RedisTransport(herald_settings, durable=FAST))
    herald.on("work:item", lambda data, meta: received.put_nowait(data))

    @herald.on("ping:me")
    async def pong(data: Any, meta: MessageMeta) -> str:
        return "pong"

    timeline_transport = RedisTransport(timeline_settings, durable=FAST)
    timeline = IPCWorker(TIMELINE, settings=timeline_settings, transport=timeline_transport)
    workers += [herald, timeline]
    await herald.start()
    await timeline.start()
    # Without CONFIG the revocations are learnt by scanning.
    assert timeline_transport.revocation_mode == "scan"

    # Pub/sub, requests, discovery and a durable emit into the other service's stream (XADD only).
    await timeline.emit("work:item", {"n": 1}, target=HERALD, durable=True)
    await timeline.emit("work:item", {"n": 2}, target=HERALD)
    assert sorted([(await asyncio.wait_for(received.get(), 10))["n"] for _ in range(2)]) == [1, 2]
    assert await timeline.request(HERALD, "ping:me", timeout=5) == "pong"
    assert {s["name"] for s in await timeline_transport.active_services()} >= {HERALD, TIMELINE}

    # The other service's stream and dead letters are refused, clearly, and counted ...
    with pytest.raises(TransportError, match=rf"Redis user '{TIMELINE}' may not read the durable backlog of {HERALD}"):
        await timeline_transport.backlog(HERALD)
    assert timeline_transport.acl_refusals == 1
    assert (await timeline_transport.backlog(TIMELINE)).length == 0  # its own is fine
    raw = Redis(port=server.port, username=TIMELINE, password=passwords[TIMELINE])
    try:
        for refused in (raw.xrange(stream_key(HERALD)), raw.xlen(dlq_key(HERALD)), raw.flushall()):
            with pytest.raises(NoPermissionError):
                await refused
    finally:
        await raw.aclose()
    # ... and the worker keeps serving.
    assert await timeline.request(HERALD, "ping:me", timeout=5) == "pong"
    await timeline.emit("work:item", {"n": 3}, target=HERALD, durable=True)
    assert (await asyncio.wait_for(received.get(), 10))["n"] == 3
    assert not any(password in record.getMessage() for record in caplog.records for password in passwords.values())


async def test_the_bridge_runs_as_its_user_and_a_wrong_password_is_refused_without_leaking_it(
    acl_server: tuple[RedisServer, dict[str, str]],
) -> None:
    server, passwords = acl_server
    backend = RedisBackend(_settings(server, "exprsn-bridge", passwords["exprsn-bridge"]))
    try:
        await backend.start()
        assert (await backend.health())[0]
        await backend.register("exprsn-x", {"name": "exprsn-x"})
        assert [s["name"] for s in await backend.services()] == ["exprsn-x"]
        assert await backend.publish_durable(HERALD, b"{}") == 1
    finally:
        await backend.close()

    wrong = _settings(server, TIMELINE, "not-the-password")
    transport = RedisTransport(wrong)
    worker = IPCWorker(TIMELINE, settings=wrong, transport=transport)
    with pytest.raises(TransportError) as caught:
        await worker.start()
    assert "not-the-password" not in str(caught.value)
    await worker.disconnect()
