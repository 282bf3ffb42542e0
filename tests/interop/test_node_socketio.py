"""A Node.js socket.io-client v4 (the original services' client library) against
the Python Bridge, with Python workers on the other side.

``tests/node/socketio_client.js`` prints one JSON line per step; the test emits
from a Python worker once Node reports it is listening.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..servers import serve
from .node import node_script

pytestmark = pytest.mark.node

SCRIPT = "socketio_client.js"
WAIT = 10.0


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
            env = {"IPC_BROKER_KEY": key, "NODE_ENV": "test", "SERVICE_NAME": "exprsn-timeline"}
            async with node_script(SCRIPT, url, env=env, wait=WAIT) as node:
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
