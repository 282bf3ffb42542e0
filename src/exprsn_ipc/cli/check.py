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


async def run_checks(
    settings: Settings,
    *,
    url: str | None = None,
    verify: ssl.SSLContext | bool = True,
    report: Callable[[CheckResult], None] | None = None,
    timeout: float = 5.0,
) -> CheckReport:
    """Run the eight checks; ``report`` is called as each one finishes."""
    base = (url or settings.bridge_url).rstrip("/")
    results = CheckReport()
    names = [
        ("Bridge Health Check", True),
        ("Socket.IO Connection", True),
        ("IPC Statistics Endpoint", True),
        ("Event Emit", True),
        ("Event Reception", False),
        ("CRUD Create", False),
        ("CRUD Read", False),
        ("JSONLex Execute", True),
    ]
    checks = [CheckResult(name, critical) for name, critical in names]

    def done(index: int, passed: bool, detail: str = "") -> None:
        checks[index].passed = passed
        checks[index].detail = detail
        results.results.append(checks[index])
        if report is not None:
            report(checks[index])

    def skip_rest(start: int, why: str) -> None:
        for index in range(start, len(checks)):
            done(index, False, why)

    async with httpx.AsyncClient(verify=verify, timeout=timeout) as http:
        # 1. health
        try:
            response = await http.get(f"{base}/health")
            body = response.json()
            done(0, body.get("status") == "healthy", f"{body.get('service')} {body.get('version')}")
        except (httpx.HTTPError, ValueError) as exc:
            done(0, False, str(exc))
        if not checks[0].passed:
            skip_rest(1, "skipped: the Bridge is not healthy")
            return results

        # 2. Socket.IO connection with a broker token
        tokens = BrokerTokenManager(service_name=SERVICE, settings=settings)
        http_session = None
        if isinstance(verify, ssl.SSLContext):
            import aiohttp

            http_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify))
        client = socketio.AsyncClient(
            reconnection=False, ssl_verify=verify is not False, http_session=http_session, logger=False
        )
        namespace = f"/ipc/{SERVICE}"
        refusals: list[str] = []

        async def on_connect_error(data: Any = None) -> None:
            # The Bridge says why it refused (e.g. "UNAUTHORIZED: invalid broker token: ...").
            refusals.append(str(data.get("message") if isinstance(data, dict) else data))

        client.on("connect_error", on_connect_error, namespace=namespace)
        try:
            try:
                await client.connect(
                    base,
                    namespaces=[namespace],
                    auth={"token": tokens.generate_token(operation="connect")},
                    transports=["websocket", "polling"],
                    wait_timeout=10,
                )
                done(1, namespace in client.namespaces, f"connected to {namespace}")
            except socketio.exceptions.ConnectionError as exc:
                done(1, False, refusals[-1] if refusals else str(exc))
            if not checks[1].passed:
                skip_rest(2, "skipped: no Socket.IO connection")
                return results

            # 3. stats
            try:
                response = await http.get(f"{base}/api/ipc/stats")
                body = response.json()
                data = body.get("data") or {}
                done(
                    2,
                    bool(body.get("success")),
                    f"activeServices={data.get('activeServices')} activeConnections={data.get('activeConnections')} "
                    f"rateLimits.enabled={(data.get('rateLimits') or {}).get('enabled')}",
                )
            except (httpx.HTTPError, ValueError) as exc:
                done(2, False, str(exc))

            # 4. emit → ipc:ack
            outcome = await _emit_and_wait(
                client,
                namespace,
                {
                    "event": "test:ping",
                    "payload": {"message": "Hello from IPC test", "timestamp": _now()},
                    "target": "broadcast",
                    "options": {"requireAck": True},
                },
                timeout,
            )
            done(3, outcome[0], outcome[1])

            # 5. reception of an event forwarded to this namespace
            received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def on_ping(data: Any = None, meta: Any = None) -> None:
                if isinstance(data, dict) and data.get("message") == "Echo test" and not received.done():
                    received.set_result(meta)

            client.on("test:ping", on_ping, namespace=namespace)
            await client.emit(
                SioEvent.EMIT,
                {"event": "test:ping", "payload": {"message": "Echo test", "timestamp": _now()}, "target": SERVICE},
                namespace=namespace,
            )
            try:
                meta = await asyncio.wait_for(received, timeout)
                done(4, True, f"from {meta.get('source') if isinstance(meta, dict) else '?'}")
            except TimeoutError:
                done(4, False, "no event within the timeout")

            # 6./7. CRUD on test_items
            created = await _call(
                client,
                namespace,
                SioEvent.CREATE,
                {
                    "resource": "test_items",
                    "data": {"name": "Test Item", "value": 42, "timestamp": _now()},
                    "options": {},
                },
                timeout,
            )
            done(5, bool(created.get("success")), str(created.get("data") or created.get("error")))
            read = await _call(
                client, namespace, SioEvent.READ, {"resource": "test_items", "query": {}, "options": {}}, timeout
            )
            items = read.get("data")
            done(6, bool(read.get("success")), f"{len(items)} items" if isinstance(items, list) else "unknown")

            # 8. JSONLex
            context = {"firstName": "John", "lastName": "Doe", "age": 25}
            answer = await _call(
                client,
                namespace,
                SioEvent.JSONLEX,
                {"expression": JSONLEX_EXPRESSION, "context": context, "options": {}},
                timeout,
            )
            raw_result = answer.get("result")
            result: dict[str, Any] = raw_result if isinstance(raw_result, dict) else {}
            ok = (
                bool(answer.get("success"))
                and result.get("fullName") == "John Doe"
                and result.get("age") == 25
                and result.get("isAdult") is True
            )
            done(7, ok, str(answer.get("result") if ok else answer))
        finally:
            await client.disconnect()
            if http_session is not None:
                await http_session.close()
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
