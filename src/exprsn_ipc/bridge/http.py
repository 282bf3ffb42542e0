"""The Bridge's HTTP API (FastAPI): health, stats, metrics, emit, JSONLex, discovery."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from exprsn_ipc import __version__
from exprsn_ipc.bridge.core import Bridge, Identity
from exprsn_ipc.bridge.credentials import token_from_connection
from exprsn_ipc.bridge.events import emit_target
from exprsn_ipc.bridge.metrics import BridgeMetrics
from exprsn_ipc.errors import AuthError, EnvelopeError, IPCError, PayloadTooLargeError
from exprsn_ipc.jsonlex.evaluator import evaluate as evaluate_jsonlex
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.metrics import MetricsExporter
from exprsn_ipc.net import is_same_origin
from exprsn_ipc.protocol.constants import BRIDGE_SERVICE, KNOWN_SERVICES
from exprsn_ipc.protocol.envelope import MISSING, loads
from exprsn_ipc.protocol.events import BusEvent
from exprsn_ipc.protocol.policy import Action

__all__ = ["build_router"]

log = get_logger("exprsn_ipc.bridge")

_STATUS = {
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "RATE_LIMIT_EXCEEDED": 429,
    "PAYLOAD_TOO_LARGE": 413,
    "NO_RECEIVERS": 404,
    "REQUEST_TIMEOUT": 504,
}


def _error(exc: IPCError) -> JSONResponse:
    # Every refusal of a caller's credentials is a 401, whatever its specific code.
    default = 401 if isinstance(exc, AuthError) else 400
    return JSONResponse(
        {"success": False, "error": exc.code, "message": str(exc)}, status_code=_STATUS.get(exc.code, default)
    )


def _bypass_headers(request: Request) -> bool:
    return request.headers.get("x-ipc-request") == "true" or request.headers.get("x-broker-token") == "true"


async def _identity(bridge: Bridge, request: Request) -> Identity:
    peer = request.client.host if request.client else None
    token = token_from_connection(request)
    # The bypass needs one of the guide's headers as well as development + loopback.
    if (token is None or token == "true") and not _bypass_headers(request):
        raise AuthError("missing broker token (x-broker-token or Authorization: Bearer)")
    same_origin = is_same_origin(request.headers.get("origin"), request.headers.get("host"))
    return bridge.authenticate(token, peer, same_origin=same_origin)


async def _json_body(bridge: Bridge, request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > bridge.max_bytes:
        raise PayloadTooLargeError(f"body exceeds the limit of {bridge.max_bytes} bytes")
    raw = await request.body()
    if len(raw) > bridge.max_bytes:
        raise PayloadTooLargeError(f"body exceeds the limit of {bridge.max_bytes} bytes")
    body = loads(raw or b"null")
    if not isinstance(body, dict):
        raise EnvelopeError("the request body must be a JSON object")
    return body


def build_router(bridge: Bridge) -> APIRouter:
    """The Bridge's HTTP API: status (health, metrics, stats), the IPC calls and discovery."""
    router = APIRouter()
    _status_routes(router, bridge)
    _ipc_routes(router, bridge)
    _discovery_routes(router, bridge)
    return router


def _status_routes(router: APIRouter, bridge: Bridge) -> None:

    @router.get("/health", tags=["bridge"])
    async def health() -> JSONResponse:
        """Liveness of the Bridge and its backend (503 with a reason when the backend is down)."""
        healthy, reason = await bridge.backend.health()
        body = {
            "status": "healthy" if healthy else "degraded",
            "service": "exprsn-bridge",
            "version": __version__,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "backend": bridge.backend.name,
        }
        if not healthy:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if healthy else 503)

    exporter = MetricsExporter(bridge.worker, sources=(BridgeMetrics(bridge), bridge.policy), own_rate_denials=False)

    @router.get("/metrics", tags=["metrics"], response_model=None)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of the Bridge and its own worker (text format); see ``bridge/operator.py``."""
        try:
            bridge.operators.check(token_from_connection(request))
        except IPCError as exc:
            bridge.stats.refused(None, exc)
            return _error(exc)
        return await exporter.response()

    @router.get("/api/ipc/stats", tags=["ipc"])
    async def stats(request: Request) -> dict[str, Any]:
        """Active services, connections, rate limits and message counters.

        Without an operator credential where one is required, only the counts (``restricted: true``).
        """
        try:
            bridge.operators.check(token_from_connection(request))
        except IPCError as exc:
            bridge.stats.refused(None, exc)
            return {"success": True, "data": {**await bridge.summary(), "restricted": True, "message": str(exc)}}
        return {"success": True, "data": await bridge.snapshot()}


def _ipc_routes(router: APIRouter, bridge: Bridge) -> None:
    @router.post("/api/ipc/emit", tags=["ipc"], response_model=None)
    async def emit(request: Request) -> JSONResponse | dict[str, Any]:
        """Publish ``{event, payload, target}`` as the calling service (broker token required)."""
        try:
            identity = await _identity(bridge, request)
            body = await _json_body(bridge, request)
            options = body.get("options") if isinstance(body.get("options"), dict) else {}
            envelope, receivers = await bridge.publish_as(
                identity, body.get("event"), body.get("payload", MISSING), emit_target(body.get("target")), options
            )
        except IPCError as exc:
            bridge.stats.refused(None, exc)
            return _error(exc)
        return {
            "success": True,
            "result": {
                "event": envelope.event,
                "target": envelope.target,
                "source": envelope.source,
                "receivers": receivers,
            },
        }

    @router.post("/api/jsonlex/execute", tags=["jsonlex"], response_model=None)
    async def jsonlex_execute(request: Request) -> JSONResponse | dict[str, Any]:
        """Evaluate ``{expression, context}`` (broker token required)."""
        try:
            identity = await _identity(bridge, request)
            await bridge.check_rate(identity.service)
            body = await _json_body(bridge, request)
            context = body.get("context") or {}
            if not isinstance(context, dict):
                raise EnvelopeError("context must be an object")
            bridge.policy.check(Action("jsonlex", identity.service, BRIDGE_SERVICE, BusEvent.JSONLEX_EXECUTE))
            result = evaluate_jsonlex(body.get("expression"), context)
        except IPCError as exc:
            bridge.stats.refused(None, exc)
            return _error(exc)
        return {"success": True, "result": result}


def _discovery_routes(router: APIRouter, bridge: Bridge) -> None:
    @router.get("/api/discovery/services", tags=["discovery"])
    async def discovery() -> dict[str, Any]:
        """Known services with their URLs, and whether each is on the bus now."""
        active = {str(entry.get("name")) for entry in await bridge.backend.services()}
        services = [_describe(name, port, name in active) for name, port in KNOWN_SERVICES.items()]
        services += [_describe(name, None, True) for name in sorted(active - set(KNOWN_SERVICES))]
        return {"success": True, "data": {"services": services, "count": len(services)}}

    @router.get("/api/discovery/services/{name}", tags=["discovery"], response_model=None)
    async def discovery_one(name: str) -> JSONResponse | dict[str, Any]:
        full = name if name.startswith("exprsn-") else f"exprsn-{name}"
        active = {entry.get("name") for entry in await bridge.backend.services()}
        if full not in KNOWN_SERVICES and full not in active:
            return JSONResponse(
                {"success": False, "error": "SERVICE_NOT_FOUND", "message": f"unknown service {name}"},
                status_code=404,
            )
        return {"success": True, "data": _describe(full, KNOWN_SERVICES.get(full), full in active)}


def _describe(name: str, port: int | None, active: bool) -> dict[str, Any]:
    return {
        "name": name,
        "url": f"https://localhost:{port}" if port else None,
        "port": port,
        "protocol": "https",
        "active": active,
    }


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "Route not found"}, status_code=404)
