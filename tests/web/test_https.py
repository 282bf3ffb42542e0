"""HTTPSServerManager against real uvicorn servers and real certificates from our generator."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from exprsn_ipc.errors import CertificateError, ConfigError, ServerStartError
from exprsn_ipc.web.https import HTTPSRedirectApp, HTTPSServerManager, ManagedServer, create_servers

from .conftest import PKI, SERVICE, free_port, make_settings


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "scheme": request.url.scheme})


def _app(**routes: Any) -> Starlette:
    return Starlette(routes=[Route("/health", _health), *(Route(f"/{name}", fn) for name, fn in routes.items())])


def _manager(pki: PKI, service: str = SERVICE, port: int = 0, **kwargs: Any) -> HTTPSServerManager:
    kwargs.setdefault("settings", make_settings())
    kwargs.setdefault("certs_dir", pki.certs_dir)
    return HTTPSServerManager(service, port, **kwargs)


@asynccontextmanager
async def _running(manager: HTTPSServerManager, app: Any) -> AsyncIterator[Any]:
    servers = await manager.start(app)
    try:
        yield servers
    finally:
        await manager.stop()


def _port_of(server: Any) -> int:
    return int(server.servers[0].sockets[0].getsockname()[1])


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


# --------------------------------------------------------------------------- #
# HTTPS, certificates, lookup order
# --------------------------------------------------------------------------- #


async def test_https_health_trusted_through_our_ca(pki: PKI) -> None:
    manager = _manager(pki)
    assert manager.tls_enabled
    assert manager.cert_path == pki.pair(SERVICE)[0]
    async with _running(manager, _app()) as servers:
        assert servers.http is None and servers.primary is servers.https
        assert isinstance(servers.https, ManagedServer)
        url = servers.urls["https"]
        async with httpx.AsyncClient(verify=pki.client_context()) as client:
            response = await client.get(f"{url}/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "scheme": "https"}
        info = manager.get_certificate_info()
        assert info is not None
        assert info["subject"]["commonName"] == SERVICE
        assert info["issuer"]["commonName"] == "Exprsn Root CA"
        assert set(info) == {"subject", "issuer", "validFrom", "validTo", "serialNumber"}


async def test_untrusted_client_fails_verification(pki: PKI) -> None:
    untrusted = httpx.AsyncClient(verify=ssl.create_default_context())
    async with _running(_manager(pki), _app()) as servers, untrusted as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{servers.urls['https']}/health")


async def test_localhost_fallback_when_the_service_has_no_certificate(pki: PKI) -> None:
    manager = _manager(pki, service="exprsn-nocert")
    assert manager.cert_path == pki.pair("localhost")[0]
    async with _running(manager, _app()) as servers, httpx.AsyncClient(verify=pki.client_context()) as client:
        assert (await client.get(f"{servers.urls['https']}/health")).status_code == 200
    info = manager.get_certificate_info()
    assert info is not None and info["subject"]["commonName"] == "localhost"


def test_invalid_service_name_still_finds_the_shared_certificate(pki: PKI) -> None:
    manager = _manager(pki, service="Not A Service")
    assert manager.cert_path == pki.pair("localhost")[0]


async def test_explicit_certificate_paths_win(pki: PKI) -> None:
    cert, key = pki.pair("localhost")
    manager = _manager(pki, cert_path=cert, key_path=key)
    assert manager.cert_path == cert
    info = manager.get_certificate_info()
    assert info is not None and info["subject"]["commonName"] == "localhost"
    with pytest.raises(ConfigError):
        _manager(pki, cert_path=cert)
    missing = _manager(pki, cert_path=cert.with_name("nope-cert.pem"), key_path=key)
    with pytest.raises(CertificateError, match=r"nope-cert\.pem"):
        await missing.start(_app())
    assert missing.servers is None


async def test_tls_disabled_serves_plain_http_on_port(pki: PKI) -> None:
    http_port = free_port()
    manager = _manager(pki, http_port=http_port, settings=make_settings(tls_enabled=False))
    assert not manager.tls_enabled
    assert manager.get_certificate_info() is None
    async with _running(manager, _app()) as servers:
        assert servers.https is None and servers.http is not None
        assert set(servers.urls) == {"http"}
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{servers.urls['http']}/health")
        assert response.json() == {"status": "ok", "scheme": "http"}
        assert await _refused(http_port)  # the app stays on `port`, unlike the original


async def test_missing_certificates_fall_back_to_http_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = HTTPSServerManager("exprsn-webtest", 0, settings=make_settings(), certs_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="exprsn_ipc.web.https"):
        async with _running(manager, _app()) as servers:
            assert servers.https is None and servers.http is not None
    assert "TLS not enabled - certificates not found" in caplog.text


# --------------------------------------------------------------------------- #
# HTTP next to HTTPS
# --------------------------------------------------------------------------- #


async def test_http_redirect_uses_configured_host_and_https_port(pki: PKI) -> None:
    http_port = free_port()
    manager = _manager(pki, http_port=http_port)
    async with _running(manager, _app()) as servers:
        assert servers.redirect
        https_port = _port_of(servers.https)
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://127.0.0.1:{http_port}/a/b%20c?x=1&y=two", headers={"host": "evil.example:666"}
            )
            head = await client.head(f"http://127.0.0.1:{http_port}/")
        assert response.status_code == 301
        assert response.headers["location"] == f"https://localhost:{https_port}/a/b%20c?x=1&y=two"
        assert "evil" not in response.text
        assert head.status_code == 301 and head.headers["location"] == f"https://localhost:{https_port}/"


async def test_following_the_redirect_reaches_https(pki: PKI) -> None:
    http_port = free_port()
    manager = _manager(pki, http_port=http_port, redirect_host="127.0.0.1")
    async with _running(manager, _app()) as servers:
        async with httpx.AsyncClient(verify=pki.client_context(), follow_redirects=True) as client:
            response = await client.get(f"{servers.urls['http']}/health")
        assert response.status_code == 200
        assert response.json()["scheme"] == "https"
        assert response.history[0].status_code == 301


async def test_http_without_redirect_serves_the_app_and_shares_lifespan_state(pki: PKI) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "hello"}
        events.append("shutdown")

    async def greet(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.greeting)

    app = Starlette(routes=[Route("/greet", greet)], lifespan=lifespan)
    manager = _manager(pki, http_port=free_port(), redirect_http=False)
    manager.on_shutdown(lambda: events.append("hook"))
    async with _running(manager, app) as servers:
        assert not servers.redirect
        async with httpx.AsyncClient(verify=pki.client_context()) as client:
            over_https = await client.get(f"{servers.urls['https']}/greet")
            over_http = await client.get(f"{servers.urls['http']}/greet")
        assert over_https.text == over_http.text == "hello"
        assert events == ["startup"]
    assert events == ["startup", "shutdown", "hook"]


async def test_redirect_app_rejects_websockets_and_bad_hosts() -> None:
    with pytest.raises(ConfigError):
        HTTPSRedirectApp("evil.example/path", 443)
    with pytest.raises(ConfigError, match="redirect host"):
        HTTPSServerManager(SERVICE, 0, settings=make_settings(), redirect_host="a@b")
    assert HTTPSRedirectApp("::1", 8443).base == "https://[::1]:8443"
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    await HTTPSRedirectApp("localhost", 443)({"type": "websocket", "path": "/"}, receive, send)
    assert sent[0]["type"] == "websocket.close"


# --------------------------------------------------------------------------- #
# TLS versions and mTLS
# --------------------------------------------------------------------------- #


async def test_tls_1_1_is_refused_and_1_2_accepted(pki: PKI) -> None:
    async with _running(_manager(pki), _app()) as servers:
        assert servers.https.config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
        port = _port_of(servers.https)

        def client(max_version: ssl.TLSVersion) -> ssl.SSLContext:
            context = pki.client_context()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
                context.minimum_version = ssl.TLSVersion.TLSv1_1
                context.maximum_version = max_version
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
            return context

        if not await _can_speak_tls_1_1(pki, client(ssl.TLSVersion.TLSv1_1)):
            pytest.skip("this OpenSSL cannot negotiate TLS 1.1 at all; minimum_version is asserted above")
        # The server answers a TLS 1.1 hello with a protocol_version alert (or a reset).
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=client(ssl.TLSVersion.TLSv1_1))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client(ssl.TLSVersion.TLSv1_2))
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        writer.close()
        await writer.wait_closed()


async def _can_speak_tls_1_1(pki: PKI, client: ssl.SSLContext) -> bool:
    """Control: does this client context reach TLS 1.1 with a server that allows it?"""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(*pki.pair("localhost"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, ssl=permissive)
    try:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="localhost")
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        server.close()
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    await server.wait_closed()
    return bool(version == "TLSv1.1")


async def test_mtls_requires_a_client_certificate(pki: PKI) -> None:
    manager = _manager(pki, mtls=True)
    async with _running(manager, _app()) as servers:
        assert servers.https.config.ssl.verify_mode == ssl.CERT_REQUIRED
        url = f"{servers.urls['https']}/health"
        async with httpx.AsyncClient(verify=pki.client_context()) as anonymous:
            with pytest.raises(httpx.TransportError):
                await anonymous.get(url)
        async with httpx.AsyncClient(verify=pki.client_context(client_cert="localhost")) as client:
            response = await client.get(url)
        assert response.status_code == 200


async def test_mtls_without_tls_is_a_configuration_error(pki: PKI, tmp_path: Path) -> None:
    manager = HTTPSServerManager(SERVICE, 0, settings=make_settings(), certs_dir=tmp_path, mtls=True)
    with pytest.raises(ConfigError, match="mtls"):
        await manager.start(_app())
    no_ca = HTTPSServerManager(
        SERVICE, 0, settings=make_settings(), certs_dir=pki.certs_dir, mtls=True, ca_path=tmp_path / "missing-ca.pem"
    )
    with pytest.raises(CertificateError, match=r"missing-ca\.pem"):
        await no_ca.start(_app())


# --------------------------------------------------------------------------- #
# Start failures
# --------------------------------------------------------------------------- #


async def test_port_in_use_fails_fast_and_names_the_port(pki: PKI) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServerStartError, match=f"port {port} is already in use"):
            await _manager(pki, port=port).start(_app())
        assert time.monotonic() - started < 2


async def test_second_port_in_use_leaves_nothing_running(pki: PKI) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    https_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        http_port = busy.getsockname()[1]
        manager = _manager(pki, port=https_port, http_port=http_port)
        with pytest.raises(ServerStartError, match=f"port {http_port} is already in use") as caught:
            await manager.start(Starlette(lifespan=lifespan))
    assert caught.value.code == "SERVER_START_FAILED"
    assert events == []  # ports are bound before the app's lifespan starts
    assert await _refused(https_port)
    assert manager.servers is None
    with socket.socket() as probe:  # the HTTPS socket was released
        probe.bind(("127.0.0.1", https_port))


async def test_lifespan_startup_failure_is_a_start_error(pki: PKI) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield

    port = free_port()
    manager = _manager(pki, port=port, lifespan="on")
    with pytest.raises(ServerStartError, match="application startup failed"):
        await manager.start(Starlette(lifespan=lifespan))
    assert await _refused(port)


async def test_start_twice_is_refused(pki: PKI) -> None:
    manager = _manager(pki)
    async with _running(manager, _app()):
        with pytest.raises(ServerStartError, match="running"):
            await manager.start(_app())


# --------------------------------------------------------------------------- #
# Graceful shutdown, hooks, signals
# --------------------------------------------------------------------------- #


async def test_graceful_shutdown_finishes_in_flight_requests_then_runs_hooks(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    order: list[str] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: Request) -> PlainTextResponse:
        entered.set()
        await release.wait()
        order.append("request finished")
        return PlainTextResponse("done")

    async def async_hook() -> None:
        order.append("ipc.disconnect")

    def failing_hook() -> None:
        order.append("failing hook")
        raise RuntimeError("boom")

    manager = _manager(pki)
    manager.on_shutdown(async_hook)
    manager.on_shutdown(failing_hook)
    manager.on_shutdown(lambda: order.append("db.close"))
    servers = await manager.start(_app(slow=slow))
    assert servers.https is not None
    port = _port_of(servers.https)
    async with httpx.AsyncClient(verify=pki.client_context()) as client:
        request = asyncio.create_task(client.get(f"{servers.urls['https']}/slow"))
        await entered.wait()
        stopping = asyncio.create_task(manager.stop())
        await servers.https.exiting.wait()
        assert await _refused(port)  # no new connections while draining
        assert order == []
        release.set()
        response = await request
        with caplog.at_level(logging.ERROR, logger="exprsn_ipc.web.https"):
            await stopping
    assert response.status_code == 200 and response.text == "done"
    assert order == ["request finished", "ipc.disconnect", "failing hook", "db.close"]
    assert "shutdown hook" in caplog.text and "boom" in caplog.text
    assert not manager.running
    await manager.stop()  # idempotent
    assert order.count("db.close") == 1


async def test_shutdown_timeout_cancels_stuck_requests(pki: PKI) -> None:
    never = asyncio.Event()
    entered = asyncio.Event()

    async def stuck(request: Request) -> PlainTextResponse:
        entered.set()
        await never.wait()
        return PlainTextResponse("unreachable")

    hooks: list[str] = []
    manager = _manager(pki, shutdown_timeout=0.2)
    manager.on_shutdown(lambda: hooks.append("ran"))
    servers = await manager.start(_app(stuck=stuck))
    async with httpx.AsyncClient(verify=pki.client_context()) as client:
        request = asyncio.create_task(client.get(f"{servers.urls['https']}/stuck"))
        await entered.wait()
        started = time.monotonic()
        await manager.stop()
        assert time.monotonic() - started < 4
        try:
            response = await request
        except httpx.HTTPError:
            pass  # the connection was dropped
        else:
            assert response.status_code == 500  # uvicorn answers for the cancelled app
    assert hooks == ["ran"]


async def test_cancelled_error_in_a_hook_propagates(pki: PKI) -> None:
    ran: list[str] = []

    def cancelling() -> None:
        raise asyncio.CancelledError

    manager = _manager(pki)
    manager.on_shutdown(cancelling)
    manager.on_shutdown(lambda: ran.append("later"))
    await manager.start(_app())
    with pytest.raises(asyncio.CancelledError):
        await manager.stop()
    assert ran == []


async def test_serve_forever_stops_on_sigterm_and_restores_handlers(pki: PKI) -> None:
    before = signal.getsignal(signal.SIGTERM)
    hooks: list[str] = []
    manager = _manager(pki)
    manager.on_shutdown(lambda: hooks.append("closed"))
    serving = asyncio.create_task(manager.serve_forever(_app()))
    await asyncio.wait_for(manager.ready.wait(), 10)
    assert manager.servers is not None
    port = _port_of(manager.servers.https)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 10)
    assert hooks == ["closed"]
    assert await _refused(port)
    assert signal.getsignal(signal.SIGTERM) == before


async def test_cancelling_serve_forever_stops_the_manager(pki: PKI) -> None:
    hooks: list[str] = []
    manager = _manager(pki)
    manager.on_shutdown(lambda: hooks.append("closed"))
    serving = asyncio.create_task(manager.serve_forever(_app(), install_signal_handlers=False))
    await asyncio.wait_for(manager.ready.wait(), 10)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert hooks == ["closed"]


async def test_a_crashed_server_stops_the_manager_and_serve_forever_raises(pki: PKI) -> None:
    hooks: list[str] = []
    manager = _manager(pki)
    manager.on_shutdown(lambda: hooks.append("closed"))
    serving = asyncio.create_task(manager.serve_forever(_app(), install_signal_handlers=False))
    await asyncio.wait_for(manager.ready.wait(), 10)
    assert manager.servers is not None and manager.servers.https is not None
    port = _port_of(manager.servers.https)

    async def broken_tick(counter: int) -> bool:
        raise RuntimeError("tick failed")

    manager.servers.https.on_tick = broken_tick  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="tick failed"):
        await asyncio.wait_for(serving, 10)
    assert hooks == ["closed"]
    assert await _refused(port)


async def test_bypass_through_a_real_server_and_a_local_proxy(pki: PKI) -> None:
    from exprsn_ipc.web import bypass_all

    async def whoami(request: Request) -> JSONResponse:
        user = getattr(request.state, "user", None)
        return JSONResponse({"user": user and user["id"], "client": request.client and request.client.host})

    settings = make_settings(node_env="development", dev_bypass=True, tls_enabled=False)
    app = _app(whoami=whoami)
    app.add_middleware(bypass_all, settings=settings)
    manager = _manager(pki, settings=settings)
    async with _running(manager, app) as servers, httpx.AsyncClient(base_url=servers.urls["http"]) as client:
        local = await client.get("/whoami", headers={"x-ipc-request": "true"})
        # A reverse proxy on this host forwarding a remote client: uvicorn trusts
        # X-Forwarded-For from 127.0.0.1 only, so the peer becomes the remote one.
        proxied = await client.get("/whoami", headers={"x-ipc-request": "true", "x-forwarded-for": "203.0.113.9"})
    assert local.json() == {"user": "dev-bypass-user", "client": "127.0.0.1"}
    assert proxied.json() == {"user": None, "client": "203.0.113.9"}


async def test_create_servers(pki: PKI) -> None:
    manager, servers = await create_servers(
        _app(), service_name=SERVICE, port=0, settings=make_settings(), certs_dir=pki.certs_dir
    )
    try:
        async with httpx.AsyncClient(verify=pki.client_context()) as client:
            assert (await client.get(f"{servers.urls['https']}/health")).status_code == 200
    finally:
        await manager.stop()
