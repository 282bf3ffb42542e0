"""The servers behind :class:`~exprsn_ipc.web.https.HTTPSServerManager`.

* :class:`ManagedServer` -- a ``uvicorn.Server`` that leaves signals to the
  manager and reports when it listens and when it starts shutting down;
* :class:`ServerSet` -- what the manager started;
* :class:`HTTPSRedirectApp` -- the plain-HTTP app answering 301 to HTTPS;
* :func:`bind_sockets` -- listening sockets with clear start-up errors.

All of them are re-exported by :mod:`exprsn_ipc.web.https`, their public home.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import uvicorn
from starlette.types import Receive, Scope, Send

from exprsn_ipc.errors import ConfigError, ServerStartError

__all__ = [
    "HTTPSRedirectApp",
    "ManagedServer",
    "ServerSet",
    "bind_sockets",
    "check_redirect_host",
    "close_sockets",
    "url_host",
]

#: Printable ASCII except space: what may appear unescaped in a ``Location``.
_LOCATION_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))
_BAD_HOST_CHARS: Final = frozenset("/?#@\\ \t\r\n\"'<>")


# --------------------------------------------------------------------------- #
# Servers
# --------------------------------------------------------------------------- #


class ManagedServer(uvicorn.Server):
    """A ``uvicorn.Server`` run by :class:`HTTPSServerManager`.

    It leaves signal handling to the manager (uvicorn's own ``capture_signals``
    would replace the process' handlers and re-raise the signal after
    shutdown), shares the application state of the manager's single lifespan,
    and exposes two events: :attr:`ready` (listening) and :attr:`exiting`
    (shutdown has begun: no new connections are accepted).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        name: str,
        app_state: dict[str, Any],
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.name = name
        self.app_state = app_state
        self.ready = asyncio.Event()
        self.exiting = asyncio.Event()
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Requests see (a copy of) the state of the lifespan the manager ran.
        self.lifespan.state = self.app_state
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()
            if self._on_ready is not None:
                self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.exiting.set()
        await super().shutdown(sockets=sockets)


@dataclass(frozen=True, slots=True)
class ServerSet:
    """What :meth:`HTTPSServerManager.start` started.

    ``https`` is the TLS server (``None`` when TLS is off); ``http`` is the
    plain server: the redirect server next to HTTPS, or the app itself when TLS
    is off. ``urls`` maps ``"https"``/``"http"`` to the listening URLs (with the
    actual ports, useful with port 0).
    """

    https: ManagedServer | None = None
    http: ManagedServer | None = None
    urls: dict[str, str] = field(default_factory=dict)
    redirect: bool = False

    @property
    def primary(self) -> ManagedServer | None:
        """The server that runs the app: ``https or http`` (the guide's ``servers.https || servers.http``)."""
        return self.https or self.http


# --------------------------------------------------------------------------- #
# The redirect app
# --------------------------------------------------------------------------- #


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_redirect_host(host: str) -> None:
    if not host or any(c in _BAD_HOST_CHARS for c in host):
        raise ConfigError(f"invalid redirect host {host!r}: give a host name or IP address only")


class HTTPSRedirectApp:
    """A tiny ASGI app answering every HTTP request with 301 to HTTPS.

    The target is ``https://<host>:<https_port><path>[?<query>]`` where host
    and port come from configuration, never from the request's ``Host``
    header (the original built it from ``req.hostname``: an open redirect).
    WebSocket connections are refused; lifespan events are acknowledged.
    """

    def __init__(self, host: str, https_port: int) -> None:
        check_redirect_host(host)
        self.base = f"https://{url_host(host)}:{https_port}"

    def location_for(self, scope: Scope) -> str:
        raw_path = scope.get("raw_path") or str(scope.get("path") or "/").encode("utf-8")
        path = quote(raw_path, safe=_LOCATION_SAFE)
        if not path.startswith("/"):
            path = "/"
        query = quote(scope.get("query_string") or b"", safe=_LOCATION_SAFE)
        return f"{self.base}{path}?{query}" if query else f"{self.base}{path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "use HTTPS"})
            return
        location = self.location_for(scope)
        body = f"Moved Permanently. Redirecting to {location}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 301,
                "headers": [
                    (b"location", location.encode("ascii")),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body if scope.get("method") != "HEAD" else b""})


# --------------------------------------------------------------------------- #
# Sockets
# --------------------------------------------------------------------------- #


def bind_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host:port``; a clear :class:`ServerStartError` on failure."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerStartError(f"cannot resolve host {host!r}: {exc}") from exc
    families = {info[0] for info in infos}
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    actual = port
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            if os.name != "nt":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(families) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if actual:  # with port 0, every address gets the first one's port
                addr = (addr[0], actual, *addr[2:])
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
            actual = sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerStartError(f"port {port} is already in use (host {host})") from exc
        if exc.errno == errno.EACCES:
            raise ServerStartError(f"permission denied listening on port {port} (host {host})") from exc
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sockets


def close_sockets(groups: list[list[socket.socket]]) -> None:
    for group in groups:
        for sock in group:
            sock.close()
