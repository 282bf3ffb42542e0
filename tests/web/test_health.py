"""Every app the server manager serves has ``/health``, hand-wired ones included.

The guide's check (``curl https://localhost:PORT/health``) failed with 404 for a
service wired by hand (steps 1-8); the manager now answers it where the app has
no route of its own, and ``doctor`` reports the status code it got.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from exprsn_ipc import IPCWorker
from exprsn_ipc.cli.doctor import run_doctor
from exprsn_ipc.errors import ServerStartError, TransportError
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.memory import MemoryBus, MemoryTransport

from ..servers import serve
from .conftest import PKI
from .test_https import _manager, _running


def hand_wired() -> tuple[FastAPI, IPCWorker]:
    """The README's wiring: the worker's lifespan, no /health route."""
    ipc = IPCWorker("exprsn-webtest", settings=make_test_settings(), transport=MemoryTransport(MemoryBus()))
    app = FastAPI(lifespan=ipc.lifespan)

    @app.get("/posts")
    async def posts() -> list[Any]:
        return []

    return app, ipc


async def test_a_hand_wired_service_answers_health(pki: PKI) -> None:
    app, ipc = hand_wired()
    async with (
        _running(_manager(pki), app) as servers,
        httpx.AsyncClient(verify=pki.client_context(), base_url=servers.urls["https"]) as http,
    ):
        health = await http.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "healthy"
        assert body["service"] == "exprsn-webtest"
        assert body["ipc"] == {"transport": "memory", "connected": True}
        assert (await http.get("/posts")).json() == []
        assert (await http.get("/missing")).status_code == 404  # only /health is answered
        assert (await http.post("/health")).status_code in (404, 405)
    assert not ipc.started


async def test_the_apps_own_health_wins(pki: PKI) -> None:
    app = FastAPI()

    @app.get("/health")
    async def own() -> dict[str, str]:
        return {"status": "mine"}

    async with (
        _running(_manager(pki), app) as servers,
        httpx.AsyncClient(verify=pki.client_context(), base_url=servers.urls["https"]) as http,
    ):
        assert (await http.get("/health")).json() == {"status": "mine"}


async def test_doctor_reports_the_status_code_and_the_cause() -> None:
    """An app served without the manager still 404s: doctor says so, not 'TLS'."""
    app, _ = hand_wired()
    settings = make_test_settings()
    async with serve(app) as url:
        items = await run_doctor(settings, "exprsn-webtest", port=0, bridge_url=url, service_url=url)
    health = items[-1]
    assert not health.ok
    assert "HTTP 404" in health.detail
    assert "/health" in health.fix and "TLS" not in health.fix


async def test_a_failed_start_is_one_line_with_its_cause(pki: PKI, caplog: Any) -> None:
    """A hand-wired service started while the Bridge is down: the cause, not two tracebacks."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        raise TransportError("cannot connect to the Bridge (start the Bridge first: `exprsn-ipc bridge`)")
        yield

    manager = _manager(pki)
    with caplog.at_level(logging.INFO), pytest.raises(ServerStartError) as failed:
        await manager.start(FastAPI(lifespan=lifespan))
    assert "start the Bridge first" in str(failed.value)
    assert "Traceback" not in caplog.text
    assert "start the Bridge first" in caplog.text
