"""Fixtures for the web tests: real certificates from our generator, settings, an ASGI driver."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exprsn_ipc.certs.authority import cert_paths, generate_certificates
from exprsn_ipc.settings import Settings

#: The service whose own certificate the generator makes for these tests.
SERVICE = "exprsn-webtest"
KEY = "k" * 40


def make_settings(**overrides: Any) -> Settings:
    """Settings independent of the environment and of any ``.env`` file."""
    values: dict[str, Any] = {"ipc_broker_key": KEY, "node_env": "test", "dev_bypass": False, "tls_enabled": True}
    values.update(overrides)
    return Settings(_env_file=None, **values)


def free_port() -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PKI:
    """A certs directory made by ``exprsn_ipc.certs.authority.generate_certificates``."""

    certs_dir: Path
    service: str

    @property
    def ca_cert(self) -> Path:
        return self.certs_dir / "ca-cert.pem"

    def pair(self, name: str) -> tuple[Path, Path]:
        return cert_paths(self.certs_dir, name)

    def client_context(self, *, client_cert: str | None = None) -> ssl.SSLContext:
        """A client context trusting our CA, optionally presenting ``client_cert``'s pair."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if client_cert is not None:
            cert, key = self.pair(client_cert)
            context.load_cert_chain(cert, key)
        return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    certs_dir = tmp_path_factory.mktemp("web-pki") / "certs"
    generate_certificates(certs_dir, only=[SERVICE])
    return PKI(certs_dir=certs_dir, service=SERVICE)


# --------------------------------------------------------------------------- #
# Driving an ASGI app with a raw scope (so the test controls the peer address)
# --------------------------------------------------------------------------- #


@dataclass
class Recorder:
    """An inner ASGI app that records the scope it was called with and answers 200."""

    calls: list[Scope] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(scope)
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    @property
    def state(self) -> dict[str, Any]:
        assert self.calls, "the inner app was not called"
        return dict(self.calls[-1].get("state", {}))


@dataclass
class Result:
    status: int | None
    headers: dict[str, str]
    body: bytes
    messages: list[Message]

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def http_scope(
    *,
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    path: str = "/resource",
    method: str = "GET",
    state: dict[str, Any] | None = None,
    type_: str = "http",
) -> Scope:
    items = headers.items() if isinstance(headers, Mapping) else headers
    scope: Scope = {
        "type": type_,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http" if type_ == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items],
        "client": client,
        "server": ("127.0.0.1", 8000),
        "state": {} if state is None else state,
    }
    return scope


async def call_asgi(app: ASGIApp, scope: Scope) -> Result:
    messages: list[Message] = []
    sent_request = False

    async def receive() -> Message:
        nonlocal sent_request
        if scope["type"] == "websocket":
            return {"type": "websocket.connect"}
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    status = None
    headers: dict[str, str] = {}
    body = b""
    for message in messages:
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")
    return Result(status, headers, body, messages)
