"""``exprsn-ipc doctor --service NAME``: the guide's checklists, run by themselves.

Each item prints ✓ or ✗; every ✗ prints how to fix it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer

from exprsn_ipc.cli._common import (
    UrlOption,
    client_ssl,
    connection_refused,
    console,
    explain_unreachable,
    load_settings,
    operator_headers,
)
from exprsn_ipc.protocol.constants import KNOWN_SERVICES, full_service_name, short_service_name
from exprsn_ipc.settings import Settings

__all__ = ["DoctorItem", "doctor", "run_doctor"]


@dataclass
class DoctorItem:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


async def run_doctor(
    settings: Settings,
    service: str,
    *,
    port: int,
    bridge_url: str,
    service_url: str | None = None,
    verify: ssl.SSLContext | bool = True,
) -> list[DoctorItem]:
    """Run every check and return the results in the guide's order."""
    items: list[DoctorItem] = []
    items.append(_certificates(settings, service))
    if settings.redis_configured:
        items.append(await _redis(settings))
    async with httpx.AsyncClient(verify=verify, timeout=5, headers=operator_headers(settings)) as http:
        items.append(await _bridge(http, bridge_url, settings))
        items.append(await _connected(http, bridge_url, service))
        items.append(_bypass(settings))
        items.append(_policy(settings))
        items.append(_identity(settings, service))
        items.append(await _health(http, service_url or f"https://localhost:{port}", service, settings))
    return items


def _certificates(settings: Settings, service: str) -> DoctorItem:
    from exprsn_ipc.certs.authority import verify_certificate

    name = "TLS certificates"
    fix = f"exprsn-ipc certs generate --services {service} --dir {settings.certs_dir}"
    try:
        result = verify_certificate(settings.certs_dir, service)
    except Exception as exc:
        return DoctorItem(name, False, str(exc), fix)
    if not result.ok:
        return DoctorItem(name, False, "; ".join(result.problems) or "invalid", fix)
    detail = f"{result.cert_path} ({result.days_left} days left)"
    if result.warning:
        detail += f", {result.warning}"
    return DoctorItem(name, True, detail)


def _policy(settings: Settings) -> DoctorItem:
    """IPC_POLICY: valid when set; required in production (without it every service may do anything)."""
    from exprsn_ipc.errors import ConfigError
    from exprsn_ipc.protocol.policy import load_policy

    name = "Access policy"
    fix = "write a policy (docs/security.md), check it with `exprsn-ipc policy check FILE`, set IPC_POLICY=FILE"
    if settings.ipc_policy is None:
        if settings.is_production:
            return DoctorItem(name, False, "no IPC_POLICY: every authenticated service may do anything", fix)
        return DoctorItem(name, True, f"none: everything allowed (NODE_ENV={settings.environment})")
    try:
        policy = load_policy(settings.ipc_policy)
    except ConfigError as exc:
        return DoctorItem(name, False, str(exc), fix)
    return DoctorItem(name, True, f"{settings.ipc_policy}: {len(policy.rules)} rule(s)")


def _identity(settings: Settings, service: str) -> DoctorItem:
    """The service's own credential, or whether the shared key may still speak for it."""
    from exprsn_ipc.errors import IPCError
    from exprsn_ipc.worker.identity import WorkerIdentity

    name = "Service identity"
    fix = f"exprsn-ipc certs issue {service} --dir {settings.certs_dir}"
    try:
        # The worker's own view: the credential it would load, the list it would apply.
        worker = WorkerIdentity(service, settings)
        identities, credential = worker.identities, worker.credential
        if credential is not None:
            identities.trust.verify(credential.certificate, credential.service)
            until = credential.certificate.not_valid_after_utc
            return DoctorItem(name, True, f"own credential {credential.serial:x}, valid until {until:%Y-%m-%d}")
        identities.check_shared_key(service)
    except IPCError as exc:
        return DoctorItem(name, False, str(exc), fix)
    shared = identities.shared_key
    allowed = "every service without a credential" if shared is None else ", ".join(sorted(shared))
    return DoctorItem(name, True, f"the shared broker key (still allowed for: {allowed})")


async def _redis(settings: Settings) -> DoctorItem:
    from redis.exceptions import RedisError

    from exprsn_ipc.transport.redis import RedisEndpoint

    client = RedisEndpoint.from_url(settings.effective_redis_url).client(
        client_name=None, socket_timeout=3, connect_timeout=3
    )
    try:
        await client.ping()
        return DoctorItem("Redis reachable", True, _safe_url(settings.effective_redis_url))
    except (RedisError, OSError) as exc:
        return DoctorItem(
            "Redis reachable", False, str(exc), "start redis-server (redis-cli ping → PONG) or fix REDIS_URL"
        )
    finally:
        await client.aclose()


def _safe_url(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def _bridge(http: httpx.AsyncClient, url: str, settings: Settings) -> DoctorItem:
    name = "Bridge reachable over HTTPS"
    fix = "start the Bridge first (exprsn-ipc bridge), check BRIDGE_URL and that certs/ca-cert.pem is trusted"
    if not url.startswith("https://"):
        return DoctorItem(
            name, False, f"BRIDGE_URL is {url}", "set BRIDGE_URL=https://localhost:3010 (TLS_ENABLED=true)"
        )
    try:
        response = await http.get(f"{url.rstrip('/')}/health")
        body = response.json()
    except httpx.HTTPError as exc:
        return DoctorItem(name, False, explain_unreachable(exc, url, settings), fix)
    except ValueError:
        return DoctorItem(name, False, f"{url}/health → HTTP {response.status_code}, not JSON", fix)
    ok = response.status_code == 200 and body.get("status") == "healthy"
    return DoctorItem(name, ok, f"{url} → HTTP {response.status_code} {body.get('status')}", "" if ok else fix)


async def _connected(http: httpx.AsyncClient, url: str, service: str) -> DoctorItem:
    name = f"{service} in active connections"
    fix = (
        f"start the service (exprsn-ipc serve module:app --service {service}); check that its "
        "IPC_BROKER_KEY equals the Bridge's and that its BRIDGE_URL points at this Bridge"
    )
    try:
        body = (await http.get(f"{url.rstrip('/')}/api/ipc/stats")).json()
    except (httpx.HTTPError, ValueError) as exc:
        return DoctorItem(name, False, str(exc), fix)
    data: dict[str, Any] = body.get("data") or {}
    names = {entry.get("name") for entry in data.get("services", []) if isinstance(entry, dict)}
    short = short_service_name(service)
    connected = any(c.get("service") == short for c in data.get("connections", []) if isinstance(c, dict))
    ok = service in names or connected
    return DoctorItem(name, ok, f"activeServices={data.get('activeServices')}", "" if ok else fix)


def _bypass(settings: Settings) -> DoctorItem:
    name = "Development bypass"
    if settings.bypass_enabled:
        return DoctorItem(name, True, "ENABLED for loopback requests (NODE_ENV=development, DEV_BYPASS=true)")
    if settings.dev_bypass:
        return DoctorItem(
            name,
            False,
            f"DEV_BYPASS=true is ignored because NODE_ENV={settings.node_env or '(unset)'}",
            "set NODE_ENV=development for local development, or DEV_BYPASS=false everywhere else",
        )
    return DoctorItem(name, True, "disabled: every request needs real authentication")


async def _health(http: httpx.AsyncClient, url: str, service: str, settings: Settings) -> DoctorItem:
    name = f"{service} HTTPS /health"
    target = f"{url.rstrip('/')}/health"
    try:
        response = await http.get(target)
    except httpx.HTTPError as exc:
        if connection_refused(exc):
            return DoctorItem(name, False, f"{target}: nothing listens there", f"start {service} on that port")
        cause = explain_unreachable(exc, url, settings)
        return DoctorItem(name, False, cause, f"serve {service} with its certificate from {settings.certs_dir}")
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if status == 404:
        return DoctorItem(
            name,
            False,
            f"{target} → HTTP 404: the service has no /health",
            "serve the app with HTTPSServerManager or `exprsn-ipc serve` (both add /health), or add the route",
        )
    ok = status == 200 and body.get("status") == "healthy" and url.startswith("https://")
    detail = f"{target} → HTTP {status} {body.get('status')} ({body.get('service')})"
    fix = "" if ok else f"{service} answered but is not healthy: see its log"
    if not url.startswith("https://"):
        fix = "serve it over HTTPS (TLS_ENABLED=true with its certificate)"
    return DoctorItem(name, ok, detail, fix)


def doctor(
    service: Annotated[
        str, typer.Option("--service", metavar="NAME", help="The service to check, e.g. exprsn-timeline.")
    ],
    port: Annotated[
        int | None, typer.Option("--port", metavar="PORT", help="The service's HTTPS port [default: its known port].")
    ] = None,
    url: UrlOption = None,
    service_url: Annotated[
        str | None,
        typer.Option("--service-url", metavar="URL", help="Base URL of the service [default: https://localhost:PORT]."),
    ] = None,
) -> None:
    """Run the guide's migration checklist for one service."""
    settings = load_settings(read_only=True)
    name = full_service_name(service)
    items = asyncio.run(
        run_doctor(
            settings,
            name,
            port=port or KNOWN_SERVICES.get(name) or 3000,
            bridge_url=url or settings.bridge_url,
            service_url=service_url,
            verify=client_ssl(settings),
        )
    )
    for item in items:
        mark = "[green]✓[/]" if item.ok else "[red]✗[/]"
        console.print(f"{mark} {item.name}  [dim]{item.detail}[/]", highlight=False)
        if not item.ok:
            console.print(f"    fix: {item.fix}", highlight=False)
    raise typer.Exit(0 if all(item.ok for item in items) else 1)
