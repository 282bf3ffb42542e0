"""A Node.js socket.io-client v4 (the original services' client library) against
the Python Bridge, with Python workers on the other side.

``tests/node/socketio_client.js`` prints one JSON line per step; the test emits
from a Python worker once Node reports it is listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.handlers import MessageMeta
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport

from ..servers import serve
from .node import NODE_DIR, node_binary

pytestmark = pytest.mark.node

SCRIPT = NODE_DIR / "socketio_client.js"
WAIT = 10.0


class NodeClient:
    """The running script: its JSON lines, read with bounded waits."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    async def next(self, timeout: float = WAIT) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"node exited early ({await self.stderr()}); lines so far: {self.lines}")
        line: dict[str, Any] = json.loads(raw)
        self.lines.append(line)
        if line.get("step") == "error":
            raise AssertionError(f"node failed: {line} ({await self.stderr()})")
        return line

    async def until(self, step: str, timeout: float = WAIT) -> dict[str, Any]:
        while True:
            line = await self.next(timeout)
            if line.get("step") == step:
                return line

    def steps(self, step: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("step") == step]

    async def stderr(self) -> str:
        if self.process.stderr is None or self.process.returncode is None:
            return ""
        return (await self.process.stderr.read()).decode(errors="replace")


@contextlib.asynccontextmanager
async def node_client(url: str, key: str) -> AsyncIterator[NodeClient]:
    env = {**os.environ, "IPC_BROKER_KEY": key, "NODE_ENV": "test", "SERVICE_NAME": "exprsn-timeline"}
    process = await asyncio.create_subprocess_exec(
        node_binary(),
        str(SCRIPT),
        url,
        cwd=NODE_DIR,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeClient(process)
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), WAIT)


async def test_node_socketio_client_against_the_python_bridge() -> None:
    settings = make_test_settings(ipc_transport="bridge", ipc_rate_max=100_000)
    assert settings.ipc_broker_key is not None
    key = settings.ipc_broker_key.get_secret_value()
    app = create_app(settings, backend=MemoryBackend())
    from_node: asyncio.Queue[tuple[Any, MessageMeta]] = asyncio.Queue()

    async with serve(app) as url:
        herald = IPCWorker("exprsn-herald", settings=settings, transport=BridgeTransport(settings, url=url))
        herald.on("node:hello", lambda data, meta: from_node.put_nowait((data, meta)))
        auth = IPCWorker("exprsn-auth", settings=settings, transport=BridgeTransport(settings, url=url))
        await herald.start()
        await auth.start()
        try:
            async with node_client(url, key) as node:
                # 1. both namespace spellings connect with a jsonwebtoken-signed token
                first, second = await node.next(), await node.next()
                assert (first["step"], first["namespace"], first["ok"]) == ("connect", "/ipc/exprsn-timeline", True)
                assert (second["step"], second["namespace"], second["ok"]) == ("connect", "/ipc/timeline", True)

                # 2. ipc:emit -> ipc:ack with receivers (both Node sockets, two workers, the Bridge)
                emit = await node.next()
                assert emit["step"] == "emit"
                assert emit["event"] == "ipc:ack", emit
                assert emit["body"]["event"] == "test:ping"
                assert emit["body"]["target"] == "broadcast"
                assert emit["body"]["receivers"] == 5

                # 3. the Python worker gets Node's event, with Node's service as source
                to_worker = await node.next()
                assert (to_worker["step"], to_worker["event"]) == ("emit-worker", "ipc:ack")
                assert to_worker["body"]["receivers"] == 1
                data, meta = await asyncio.wait_for(from_node.get(), WAIT)
                assert data == {"from": "node", "n": 1}
                assert meta.source == "exprsn-timeline"

                # 4. a Python worker's emit reaches both Node sockets as (data, meta)
                await node.until("listening")
                result = await auth.emit("post:created", {"postId": 99}, target="exprsn-timeline")
                assert result.receivers == 2
                received = [await node.next(), await node.next()]
                assert {r["namespace"] for r in received} == {"/ipc/exprsn-timeline", "/ipc/timeline"}
                for line in received:
                    assert line["step"] == "received", line
                    assert line["data"] == {"postId": 99}
                    assert line["meta"]["source"] == "exprsn-auth"
                    assert line["meta"]["target"] == "exprsn-timeline"
                    assert line["meta"]["event"] == "post:created"
                    assert line["meta"]["channel"] == "ipc:exprsn-timeline"

                # 5. CRUD and JSONLex
                create = await node.next()
                assert create["step"] == "create"
                assert create["response"]["success"] is True
                item = create["response"]["data"]
                assert (item["name"], item["value"]) == ("Test Item", 42)
                read = await node.next()
                assert read["step"] == "read"
                assert read["response"]["success"] is True
                assert [i["id"] for i in read["response"]["data"]] == [item["id"]]
                jsonlex = await node.next()
                assert jsonlex["step"] == "jsonlex"
                assert jsonlex["response"] == {
                    "success": True,
                    "result": {"fullName": "John Doe", "age": 25, "isAdult": True},
                }

                # 6. no token outside development: a clear connect_error
                refused = await node.next()
                assert refused["step"] == "unauthorized"
                assert refused["ok"] is True, refused
                assert refused["message"].startswith("UNAUTHORIZED: missing broker token")
                assert refused["data"] == {"error": "UNAUTHORIZED"}

                assert (await node.next())["step"] == "done"
                assert await asyncio.wait_for(node.process.wait(), WAIT) == 0
        finally:
            await auth.disconnect()
            await herald.disconnect()
