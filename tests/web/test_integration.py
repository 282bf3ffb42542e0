"""request.state.ipc, get_ipc, migrate_app (the guide's steps 2–4 and 8) and doctor."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.types import Receive, Scope, Send

from exprsn_ipc import IPCWorker, NotConnectedError
from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.cli.doctor import run_doctor
from exprsn_ipc.transport import MemoryBus, MemoryTransport
from exprsn_ipc.web.https import HTTPSServerManager
from exprsn_ipc.web.integration import get_ipc, has_route, migrate_app

from ..servers import serve
from .conftest import KEY, PKI, make_settings


def worker(bus: MemoryBus, name: str = "exprsn-timeline", **settings: Any) -> IPCWorker:
    return IPCWorker(name, settings=make_settings(**settings), transport=MemoryTransport(bus))


async def test_lifespan_puts_the_worker_in_request_state() -> None:
    bus = MemoryBus()
    ipc = worker(bus)
    app = FastAPI(lifespan=ipc.lifespan)

    @app.post("/posts")
    async def create(request: Request, dep: IPCWorker = Depends(get_ipc)) -> dict[str, Any]:
        assert request.state.ipc is dep is ipc
        result = await dep.emit("post:created", {"id": 1})
        return {"receivers": result.receivers}

    async with serve(app) as url, httpx.AsyncClient() as client:
        assert ipc.started
        response = await client.post(f"{url}/posts")
    assert response.json() == {"receivers": 1}  # the worker itself, subscribed to broadcast
    assert not ipc.started  # lifespan shutdown disconnected it


def test_get_ipc_without_a_worker_is_a_clear_error() -> None:
    with pytest.raises(NotConnectedError, match="lifespan"):
        get_ipc(Request({"type": "http", "headers": [], "state": {}}))


async def test_migrate_app_adds_health_ipc_and_orders_shutdown() -> None:
    bus = MemoryBus()
    ipc = worker(bus)
    order: list[str] = []
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        order.append(f"app start (ipc started={ipc.started})")
        yield
        order.append(f"app stop (ipc started={ipc.started})")

    plain = FastAPI(lifespan=lifespan)

    @plain.get("/who")
    async def who(request: Request) -> dict[str, Any]:
        return {"service": request.state.ipc.service_name}

    assert not has_route(plain, "/health")
    app = migrate_app(plain, ipc, settings=make_settings())
    async with serve(app) as url, httpx.AsyncClient() as client:
        health = (await client.get(f"{url}/health")).json()
        assert health["status"] == "healthy"
        assert health["service"] == "exprsn-timeline"
        assert (await client.get(f"{url}/who")).json() == {"service": "exprsn-timeline"}
    # Guide step 8: IPC disconnects before the app closes its own connections.
    assert order == ["app start (ipc started=True)", "app stop (ipc started=False)"]


async def test_migrate_app_keeps_the_apps_own_health_and_supports_apps_without_lifespan() -> None:
    bus = MemoryBus()
    own = FastAPI()

    @own.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy", "service": "mine"}

    ipc = worker(bus)
    async with serve(migrate_app(own, ipc, settings=make_settings())) as url, httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/health")).json()["service"] == "mine"

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    ipc2 = worker(bus, "exprsn-herald")
    async with serve(migrate_app(raw_app, ipc2, settings=make_settings())) as url, httpx.AsyncClient() as client:
        assert ipc2.started
        assert (await client.get(f"{url}/anything")).status_code == 204
    assert not ipc2.started


async def test_failed_app_startup_disconnects_the_worker() -> None:
    import contextlib

    @contextlib.asynccontextmanager
    async def broken(app: FastAPI) -> Any:
        raise RuntimeError("database unreachable")
        yield

    ipc = worker(MemoryBus())
    app = migrate_app(FastAPI(lifespan=broken), ipc, settings=make_settings())
    incoming = [{"type": "lifespan.startup"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    with contextlib.suppress(RuntimeError):
        await app({"type": "lifespan", "state": {}, "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert not ipc.started


async def test_bypass_through_migrate_app_only_in_development() -> None:
    plain = FastAPI()

    @plain.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        return {"user": getattr(request.state, "user", None)}

    for node_env, expected in (("development", "dev-bypass-user"), ("production", None)):
        settings = make_settings(node_env=node_env, dev_bypass=True)
        ipc = worker(MemoryBus(), node_env=node_env, dev_bypass=True)
        async with serve(migrate_app(plain, ipc, settings=settings)) as url, httpx.AsyncClient() as client:
            body = (await client.get(f"{url}/me", headers={"x-ipc-request": "true"})).json()
        assert (body["user"] or {}).get("id") == expected


async def test_doctor_all_green_for_a_migrated_service_over_https(pki: PKI) -> None:
    """serve-style stack: Bridge over HTTPS, a migrated plain app over HTTPS, doctor green."""
    settings = make_settings(certs_dir=pki.certs_dir, ipc_transport="bridge")
    bridge_manager = HTTPSServerManager("exprsn-bridge", 0, settings=settings, lifespan="on")
    bridge_servers = await bridge_manager.start(create_app(settings, backend=MemoryBackend()))
    bridge_url = bridge_servers.urls["https"].replace("127.0.0.1", "localhost")
    svc_settings = make_settings(certs_dir=pki.certs_dir, bridge_url=bridge_url)
    ipc = IPCWorker(pki.service, settings=svc_settings)
    service_manager = HTTPSServerManager(pki.service, 0, settings=svc_settings, lifespan="on")
    try:
        servers = await service_manager.start(migrate_app(FastAPI(), ipc, settings=svc_settings))
        service_url = servers.urls["https"].replace("127.0.0.1", "localhost")
        items = await run_doctor(
            svc_settings,
            pki.service,
            port=0,
            bridge_url=bridge_url,
            service_url=service_url,
            verify=pki.client_context(),
        )
        assert [(i.name, i.ok) for i in items if not i.ok] == []
        assert len(items) == 7  # no Redis configured: that item is not run
        await service_manager.stop()
        items = await run_doctor(
            svc_settings,
            pki.service,
            port=0,
            bridge_url=bridge_url,
            service_url=service_url,
            verify=pki.client_context(),
        )
        failed = {i.name: i for i in items if not i.ok}
        assert set(failed) == {f"{pki.service} in active connections", f"{pki.service} HTTPS /health"}
        assert all(item.fix for item in failed.values())
    finally:
        await service_manager.stop()
        await bridge_manager.stop()


async def test_doctor_flags_an_ignored_bypass_and_missing_certificates(tmp_path: Any) -> None:
    settings = make_settings(node_env="production", dev_bypass=True, certs_dir=tmp_path / "none", ipc_broker_key=KEY)
    items = await run_doctor(settings, "exprsn-timeline", port=1, bridge_url="https://localhost:1", verify=False)
    by_name = {i.name: i for i in items}
    assert not by_name["Development bypass"].ok
    assert "NODE_ENV=production" in by_name["Development bypass"].detail
    assert not by_name["TLS certificates"].ok
    assert "certs generate" in by_name["TLS certificates"].fix
    assert not by_name["Bridge reachable over HTTPS"].ok
    assert not by_name["Access policy"].ok and "IPC_POLICY" in by_name["Access policy"].fix
