"""``exprsn-ipc check``: the Python port of the guide's ``node test-ipc-communication.js``.

The same eight checks in the same order, against ``BRIDGE_URL``. Unlike the
original script, it authenticates its Socket.IO connection with a broker token
(the Bridge refuses tokenless clients outside the development bypass).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import socketio

from exprsn_ipc.cli._common import explain_refusal, explain_unreachable, operator_headers
from exprsn_ipc.protocol.events import SioEvent
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings

__all__ = ["CheckResult", "run_checks"]

SERVICE = "exprsn-timeline"
JSONLEX_EXPRESSION = {
    "__jsonlex": True,
    "expr": {
        "fullName": {"$concat": [{"$var": "firstName"}, " ", {"$var": "lastName"}]},
        "age": {"$var": "age"},
        "isAdult": {"$gte": [{"$var": "age"}, 18]},
    },
}


@dataclass
class CheckResult:
    name: str
    critical: bool
    passed: bool = False
    skipped: bool = False
    detail: str = ""

    @property
    def status(self) -> str:
        if self.passed:
            return "PASS"
        return "FAIL" if self.critical else "SKIP"

    @property
    def icon(self) -> str:
        return {"PASS": "✓", "FAIL": "✗", "SKIP": "⊘"}[self.status]

    def line(self) -> str:
        return f"{self.icon} {self.name.ljust(30)} {self.status}"


@dataclass
class CheckReport:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results if r.critical)

    def summary(self) -> str:
        passed = sum(r.passed for r in self.results)
        failed = sum(r.status == "FAIL" for r in self.results)
        skipped = sum(r.status == "SKIP" for r in self.results)
        return f"Total: {len(self.results)} | Passed: {passed} | Failed: {failed} | Skipped: {skipped}"


#: A check: it returns whether it passed and what to show after the result.
Check = Callable[["_Checker"], Awaitable[tuple[bool, str]]]


class _Checker:
    """The state the eight checks share: the HTTP client and the Socket.IO connection."""

    def __init__(self, settings: Settings, base: str, verify: ssl.SSLContext | bool, timeout: float) -> None:
        self.settings = settings
        self.base = base
        self.verify = verify
        self.timeout = timeout
        self.namespace = f"/ipc/{SERVICE}"
        self.http = httpx.AsyncClient(verify=verify, timeout=timeout, headers=operator_headers(settings))
        self.client: socketio.AsyncClient | None = None
        self._session: Any = None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()
        if self._session is not None:
            await self._session.close()
        await self.http.aclose()

    async def health(self) -> tuple[bool, str]:
        try:
            response = await self.http.get(f"{self.base}/health")
            body = response.json()
        except httpx.HTTPError as exc:
            return False, explain_unreachable(exc, self.base, self.settings)
        except ValueError:
            return False, f"{self.base}/health answered HTTP {response.status_code} without JSON: is it a Bridge?"
        return body.get("status") == "healthy", f"{body.get('service')} {body.get('version')}"

    async def connect(self) -> tuple[bool, str]:
        """A Socket.IO connection to /ipc/exprsn-timeline, authenticated with a broker token."""
        tokens = BrokerTokenManager(service_name=SERVICE, settings=self.settings)
        if isinstance(self.verify, ssl.SSLContext):
            import aiohttp

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.verify))
        client = self.client = socketio.AsyncClient(
            reconnection=False,
            ssl_verify=self.verify is not False,
            http_session=self._session,
            logger=False,
            handle_sigint=False,
        )
        refusals: list[str] = []

        async def on_connect_error(data: Any = None) -> None:
            # The Bridge says why it refused (e.g. "UNAUTHORIZED: invalid broker token: ...").
            refusals.append(str(data.get("message") if isinstance(data, dict) else data))

        client.on("connect_error", on_connect_error, namespace=self.namespace)
        try:
            await client.connect(
                self.base,
                namespaces=[self.namespace],
                auth={"token": tokens.generate_token(operation="connect")},
                transports=["websocket", "polling"],
                wait_timeout=10,
            )
        except socketio.exceptions.ConnectionError as exc:
            if refusals:
                return False, explain_refusal(refusals[-1])
            return False, explain_unreachable(exc, self.base, self.settings)
        return self.namespace in client.namespaces, f"connected to {self.namespace}"

    @property
    def sio(self) -> socketio.AsyncClient:
        assert self.client is not None, "the connection check runs first"
        return self.client

    async def stats(self) -> tuple[bool, str]:
        try:
            body = (await self.http.get(f"{self.base}/api/ipc/stats")).json()
        except (httpx.HTTPError, ValueError) as exc:
            return False, str(exc)
        data = body.get("data") or {}
        return bool(body.get("success")), (
            f"activeServices={data.get('activeServices')} activeConnections={data.get('activeConnections')} "
            f"rateLimits.enabled={(data.get('rateLimits') or {}).get('enabled')}"
        )

    async def emit(self) -> tuple[bool, str]:
        """An ``ipc:emit`` answered by ``ipc:ack``."""
        payload = {
            "event": "test:ping",
            "payload": {"message": "Hello from IPC test", "timestamp": _now()},
            "target": "broadcast",
            "options": {"requireAck": True},
        }
        return await _emit_and_wait(self.sio, self.namespace, payload, self.timeout)

    async def reception(self) -> tuple[bool, str]:
        """An event addressed to this namespace's service comes back to it."""
        received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def on_ping(data: Any = None, meta: Any = None) -> None:
            if isinstance(data, dict) and data.get("message") == "Echo test" and not received.done():
                received.set_result(meta)

        self.sio.on("test:ping", on_ping, namespace=self.namespace)
        await self.sio.emit(
            SioEvent.EMIT,
            {"event": "test:ping", "payload": {"message": "Echo test", "timestamp": _now()}, "target": SERVICE},
            namespace=self.namespace,
        )
        try:
            meta = await asyncio.wait_for(received, self.timeout)
        except TimeoutError:
            return False, "no event within the timeout"
        return True, f"from {meta.get('source') if isinstance(meta, dict) else '?'}"

    async def crud_create(self) -> tuple[bool, str]:
        item = {"name": "Test Item", "value": 42, "timestamp": _now()}
        created = await self._call(SioEvent.CREATE, {"resource": "test_items", "data": item, "options": {}})
        return bool(created.get("success")), str(created.get("data") or created.get("error"))

    async def crud_read(self) -> tuple[bool, str]:
        read = await self._call(SioEvent.READ, {"resource": "test_items", "query": {}, "options": {}})
        items = read.get("data")
        return bool(read.get("success")), f"{len(items)} items" if isinstance(items, list) else "unknown"

    async def jsonlex(self) -> tuple[bool, str]:
        context = {"firstName": "John", "lastName": "Doe", "age": 25}
        answer = await self._call(
            SioEvent.JSONLEX, {"expression": JSONLEX_EXPRESSION, "context": context, "options": {}}
        )
        raw_result = answer.get("result")
        result: dict[str, Any] = raw_result if isinstance(raw_result, dict) else {}
        ok = (
            bool(answer.get("success"))
            and result.get("fullName") == "John Doe"
            and result.get("age") == 25
            and result.get("isAdult") is True
        )
        return ok, str(answer.get("result") if ok else answer)

    async def _call(self, event: str, data: Any) -> dict[str, Any]:
        return await _call(self.sio, self.namespace, event, data, self.timeout)


#: The eight checks in the original script's order: (name, critical, check, why the rest is
#: skipped when it fails, or None when the rest can still run).
CHECKS: list[tuple[str, bool, Check, str | None]] = [
    ("Bridge Health Check", True, _Checker.health, "skipped: the Bridge is not healthy"),
    ("Socket.IO Connection", True, _Checker.connect, "skipped: no Socket.IO connection"),
    ("IPC Statistics Endpoint", True, _Checker.stats, None),
    ("Event Emit", True, _Checker.emit, None),
    ("Event Reception", False, _Checker.reception, None),
    ("CRUD Create", False, _Checker.crud_create, None),
    ("CRUD Read", False, _Checker.crud_read, None),
    ("JSONLex Execute", True, _Checker.jsonlex, None),
]


async def run_checks(
    settings: Settings,
    *,
    url: str | None = None,
    verify: ssl.SSLContext | bool = True,
    report: Callable[[CheckResult], None] | None = None,
    timeout: float = 5.0,
) -> CheckReport:
    """Run the eight checks; ``report`` is called as each one finishes."""
    checker = _Checker(settings, (url or settings.bridge_url).rstrip("/"), verify, timeout)
    results = CheckReport()
    skipped_because: str | None = None
    try:
        for name, critical, check, gate in CHECKS:
            result = CheckResult(name, critical)
            if skipped_because is not None:
                result.detail = skipped_because
            else:
                result.passed, result.detail = await check(checker)
                if not result.passed and gate is not None:
                    skipped_because = gate
            results.results.append(result)
            if report is not None:
                report(result)
    finally:
        await checker.close()
    return results


async def _call(client: socketio.AsyncClient, namespace: str, event: str, data: Any, timeout: float) -> dict[str, Any]:
    try:
        reply = await client.call(event, data, namespace=namespace, timeout=timeout)
    except socketio.exceptions.TimeoutError:
        return {"success": False, "error": "timeout"}
    return reply if isinstance(reply, dict) else {"success": False, "error": f"unexpected reply {reply!r}"}


async def _emit_and_wait(
    client: socketio.AsyncClient, namespace: str, payload: dict[str, Any], timeout: float
) -> tuple[bool, str]:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[bool, str]] = loop.create_future()

    def settle(value: tuple[bool, str]) -> None:
        if not outcome.done():
            outcome.set_result(value)

    handlers: list[tuple[str, Callable[..., Awaitable[None]]]] = []

    async def on_ack(data: Any = None) -> None:
        settle((True, f"receivers={data.get('receivers') if isinstance(data, dict) else '?'}"))

    async def on_error(data: Any = None) -> None:
        settle((False, str(data)))

    handlers = [(SioEvent.ACK, on_ack), (SioEvent.ERROR, on_error)]
    for event, handler in handlers:
        client.on(event, handler, namespace=namespace)
    await client.emit(SioEvent.EMIT, payload, namespace=namespace)
    try:
        return await asyncio.wait_for(outcome, timeout)
    except TimeoutError:
        return False, "no ipc:ack within the timeout"


def _now() -> int:
    return int(time.time() * 1000)
