"""Servers the benchmarks run in a process of their own.

    python -m benchmarks.servers bridge   # the Bridge, embedded backend, plain HTTP
    python -m benchmarks.servers relay    # a bare python-socketio relay (the baseline),
                                          # and a plain websocket relay (the floor)

Each binds 127.0.0.1 on a free port, prints ``READY <port>``, and exits when its
stdin closes (the parent went away) or after ``--lifetime`` seconds, whichever
comes first. Both run uvicorn with the same options (uvloop, httptools and
websockets when installed, as ``exprsn-ipc bridge`` does). The broker key comes
from ``BENCH_BROKER_KEY``. ``BENCH_PROFILE=<file>`` writes a cProfile of the
server to that file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import socket
import sys
import threading
from typing import Any

import socketio
import uvicorn

from exprsn_ipc.bridge import MemoryBackend, create_app

from .common import bench_settings

#: Room of the relay's receiving client, and of its requesting client.
ROOM_B = "b"
ROOM_A = "a"


def bridge_app() -> Any:
    settings = bench_settings(
        ipc_transport="bridge",
        ipc_broker_key=os.environ["BENCH_BROKER_KEY"],
        # The limiter stays on (its cost is part of the path) but never trips.
        ipc_rate_max=1_000_000_000,
    )
    return create_app(settings, backend=MemoryBackend())


def relay_app() -> Any:
    """The least a Socket.IO relay can do: re-emit A's message to B, and answer acks."""
    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        role = auth.get("role") if isinstance(auth, dict) else None
        if role in (ROOM_A, ROOM_B):
            await sio.enter_room(sid, role)

    @sio.on("relay")
    async def relay(sid: str, data: Any) -> int:
        await sio.emit("msg", data, room=ROOM_B)
        return 1

    @sio.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    @sio.on("req")
    async def request(sid: str, data: Any) -> None:
        await sio.emit("req", data, room=ROOM_B)

    @sio.on("res")
    async def response(sid: str, data: Any) -> None:
        await sio.emit("res", data, room=ROOM_A)

    return RawRelay(socketio.ASGIApp(sio))


class RawRelay:
    """Plain websockets at ``/raw/a`` and ``/raw/b``: a frame from one is sent to the other.

    The floor under any relay over websockets on this machine: four hops, no
    Socket.IO, nothing signed or checked. Everything else goes to ``app``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.peers: dict[str, Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket" or scope["path"] not in ("/raw/a", "/raw/b"):
            await self.app(scope, receive, send)
            return
        role = scope["path"][-1]
        other = ROOM_B if role == ROOM_A else ROOM_A
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        self.peers[role] = send
        try:
            while (message := await receive())["type"] == "websocket.receive":
                peer = self.peers.get(other)
                if peer is not None:
                    await peer({"type": "websocket.send", "text": message["text"]})
        finally:
            self.peers.pop(role, None)


async def serve(app: Any, lifetime: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        server.should_exit = True

    def watch_stdin() -> None:
        with contextlib.suppress(OSError):
            sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop)

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(lifetime, stop)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise SystemExit("the server stopped during start-up")
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    parser.add_argument("kind", choices=["bridge", "relay"])
    parser.add_argument("--lifetime", type=float, default=120.0, help="exit after this many seconds at the latest")
    args = parser.parse_args()
    app = bridge_app() if args.kind == "bridge" else relay_app()
    profile_path = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_path else None
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        if profiler is not None:
            profiler.enable()
        try:
            runner.run(serve(app, args.lifetime))
        finally:
            if profiler is not None and profile_path:
                profiler.disable()
                profiler.dump_stats(profile_path)


if __name__ == "__main__":
    main()
