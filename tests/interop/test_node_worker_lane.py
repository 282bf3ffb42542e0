"""A Node.js socket.io-client v4 on the Bridge's worker lane (bridge/lane.py).

The lane is our own Engine.IO / Socket.IO server for IPC workers; a stock
third-party client that asks for it must be served exactly like our own link:
``tests/node/lane_worker.js`` connects with ``query: {protocol: "exprsn-ipc/1"}``,
exchanges signed envelopes with a Python worker and checks the refusals.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.bridge.lane import LaneLink
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport
from exprsn_ipc.worker.handlers import MessageMeta

from ..servers import serve
from .node import node_script

pytestmark = [pytest.mark.node, pytest.mark.timeout(60)]

SCRIPT = "lane_worker.js"
WAIT = 10.0


async def test_node_socketio_client_on_the_worker_lane() -> None:
    settings = make_test_settings(ipc_transport="bridge", ipc_rate_max=100_000)
    assert settings.ipc_broker_key is not None
    key = settings.ipc_broker_key.get_secret_value()
    app = create_app(settings, backend=MemoryBackend())
    pongs: asyncio.Queue[tuple[Any, MessageMeta]] = asyncio.Queue()

    async with serve(app) as url:
        herald = IPCWorker("exprsn-herald", settings=settings, transport=BridgeTransport(settings, url=url))
        herald.on("lane:pong", lambda data, meta: pongs.put_nowait((data, meta)))
        await herald.start()
        try:
            env = {"IPC_BROKER_KEY": key, "SERVICE_NAME": "exprsn-timeline", "PEER_SERVICE": "exprsn-herald"}
            async with node_script(SCRIPT, url, env=env, wait=WAIT) as node:
                await node.step("connected")
                (conn,) = [c for c in app.bridge.connections.values() if c.service == "exprsn-timeline"]
                assert isinstance(conn.link, LaneLink)
                assert conn.mode == "envelope"

                services = await node.step("services")
                assert services["success"] is True
                assert {"exprsn-timeline", "exprsn-herald"} <= set(services["names"])

                await node.step("listening")
                sent = await herald.emit("lane:ping", {"n": 7}, target="exprsn-timeline")
                assert sent.receivers == 1
                received = await node.step("received")
                assert received["channel"] == "ipc:exprsn-timeline"
                assert (received["event"], received["source"], received["data"]) == (
                    "lane:ping",
                    "exprsn-herald",
                    {"n": 7},
                )

                # An envelope signed by jsonwebtoken in Node reaches and passes the Python worker.
                published = await node.step("published")
                assert published["answer"] == {"success": True, "receivers": 1}
                data, meta = await asyncio.wait_for(pongs.get(), WAIT)
                assert data == {"seen": {"n": 7}}
                assert meta.source == "exprsn-timeline"

                unknown = await node.step("unknown")
                assert unknown["answer"]["success"] is False
                assert unknown["answer"]["error"] == "INVALID_MESSAGE"
                assert "ipc:nope" in unknown["errors"][0]["message"]

                forged = await node.step("forged")
                assert forged["refused"] is True
                assert forged["message"].startswith("UNAUTHORIZED: ")
                assert forged["data"] == {"error": "UNAUTHORIZED"}
                no_protocol = await node.step("no-protocol")
                assert no_protocol["refused"] is True
                assert no_protocol["message"].startswith("INVALID_MESSAGE: ")
                no_token = await node.step("no-token")
                assert no_token["refused"] is True
                assert no_token["message"].startswith("UNAUTHORIZED: ")
                await node.step("done")
        finally:
            await herald.disconnect()

    rejected = app.bridge.stats.rejected
    assert rejected["UNAUTHORIZED"] == 2
    assert rejected["INVALID_MESSAGE"] == 1
    assert rejected["UNKNOWN_EVENT"] == 1
    assert herald.stats.rejected == {}
