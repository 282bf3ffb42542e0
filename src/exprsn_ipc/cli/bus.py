"""The commands that talk to a running Bridge: ``check``, ``stats``, ``emit``, ``listen``.

They are read-only on this machine: none of them writes a file.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from exprsn_ipc.cli._common import (
    UrlOption,
    client_ssl,
    configure_logging,
    console,
    explain_refusal,
    explain_unreachable,
    fail,
    load_settings,
    operator_headers,
    require_broker_key,
    run_job,
)
from exprsn_ipc.settings import Settings

__all__ = ["check", "emit", "listen", "stats"]

InsecureOption = Annotated[
    bool,
    typer.Option("--insecure", help="Do not verify the Bridge's certificate (development only)."),
]
AsOption = Annotated[str, typer.Option("--as", metavar="SERVICE", help="The service to sign the broker token as.")]


def check(url: UrlOption = None, insecure: InsecureOption = False) -> None:
    """Run the guide's 8 IPC checks against the Bridge (test-ipc-communication.js)."""
    settings = load_settings(read_only=True)
    require_broker_key(settings)
    from exprsn_ipc.cli.check import run_checks

    target = url or settings.bridge_url
    console.print(f"🧪 Testing the Exprsn IPC system at {target}\n")
    report = asyncio.run(
        run_checks(settings, url=target, verify=client_ssl(settings, insecure=insecure), report=lambda r: None)
    )
    for result in report.results:
        style = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}[result.status]
        console.print(f"[{style}]{result.line()}[/]  [dim]{result.detail}[/]", highlight=False, soft_wrap=True)
    console.print()
    console.print(report.summary())
    if report.ok:
        console.print("[green]✓ All critical tests passed! IPC system is operational.[/]")
        raise typer.Exit(0)
    console.print("[red]✗ Some critical tests failed.[/]")
    raise typer.Exit(1)


def _bridge_token(settings: Settings, service: str) -> str:
    from exprsn_ipc.protocol.tokens import BrokerTokenManager

    return BrokerTokenManager(service_name=service, settings=settings).generate_token(operation="cli")


def stats(
    url: UrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")] = False,
    insecure: InsecureOption = False,
) -> None:
    """Show the Bridge's IPC statistics (GET /api/ipc/stats)."""
    import httpx

    settings = load_settings(read_only=True)
    base = (url or settings.bridge_url).rstrip("/")
    try:
        verify = client_ssl(settings, insecure=insecure)
        response = httpx.get(f"{base}/api/ipc/stats", verify=verify, timeout=5, headers=operator_headers(settings))
        body = response.json()
    except httpx.HTTPError as exc:
        fail(explain_unreachable(exc, base, settings), 1)
    except ValueError:
        fail(f"{base}/api/ipc/stats did not answer JSON (HTTP {response.status_code}): is {base} a Bridge?", 1)
    if as_json:
        console.print_json(json.dumps(body))
        return
    _print_stats(body.get("data", {}))


def _print_stats(data: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(
        f"active services: {data.get('activeServices')}   connections: {data.get('activeConnections')}   "
        f"rate limits: {data.get('rateLimits')}"
    )
    table = Table("service", "replicas", "pid", "host", "via")
    for entry in data.get("services", []):
        table.add_row(
            *(str(entry.get(key, "—")) for key in ("name", "replicas", "pid", "hostname")), str(entry.get("via", "bus"))
        )
    console.print(table)
    instances = data.get("instances", [])
    if instances:
        replicas = Table("replica", "service", "in flight", "transport", "version")
        for record in instances:
            replicas.add_row(
                *(str(record.get(key, "—")) for key in ("id", "service", "inFlight", "transport", "version"))
            )
        console.print(replicas)
    console.print(data.get("counters", {}))


def emit(
    event: Annotated[str, typer.Argument(metavar="EVENT", help="Event name, e.g. post:created.")],
    payload: Annotated[str, typer.Argument(metavar="PAYLOAD", help="The event's data, as JSON.")] = "{}",
    target: Annotated[
        str, typer.Option("--target", metavar="SERVICE", help="A service name, or broadcast.")
    ] = "broadcast",
    service: AsOption = "exprsn-cli",
    url: UrlOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Publish one event through the Bridge (POST /api/ipc/emit) and say how many received it."""
    import httpx

    settings = load_settings(read_only=True)
    require_broker_key(settings)
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"the payload is not JSON ({exc}): quote it, e.g. '{{\"id\": 1}}'")
    base = (url or settings.bridge_url).rstrip("/")
    try:
        response = httpx.post(
            f"{base}/api/ipc/emit",
            json={"event": event, "payload": data, "target": target},
            headers={"x-broker-token": _bridge_token(settings, service)},
            verify=client_ssl(settings, insecure=insecure),
            timeout=5,
        )
        body = response.json()
    except httpx.HTTPError as exc:
        fail(explain_unreachable(exc, base, settings), 1)
    except ValueError:
        fail(f"{base}/api/ipc/emit did not answer JSON (HTTP {response.status_code}): is {base} a Bridge?", 1)
    if not body.get("success"):
        fail(explain_refusal(f"{body.get('error')}: {body.get('message')}"), 1)
    result = body["result"]
    receivers = result["receivers"]
    console.print(f"published {result['event']} to {result['target']} as {result['source']}: {receivers} receivers")
    if receivers == 0:
        console.print("nobody listened: no connected service handles this event (names are case-sensitive)")


def listen(
    events: Annotated[
        list[str] | None, typer.Argument(metavar="[EVENT]...", help="Only these events [default: all].")
    ] = None,
    service: Annotated[
        str, typer.Option("--as", metavar="SERVICE", help="The service (namespace) to listen as.")
    ] = "exprsn-cli",
    url: UrlOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Print the events reaching a service (broadcasts and its own) until Ctrl-C."""
    settings = load_settings(read_only=True)
    require_broker_key(settings)
    configure_logging(settings.log_level)
    wanted = set(events or [])
    from exprsn_ipc.cli.serving import tail_events

    def show(event: str, data: Any, meta: Any) -> None:
        if wanted and event not in wanted:
            return
        source = meta.get("source") if isinstance(meta, dict) else "?"
        target = meta.get("target") if isinstance(meta, dict) else "?"
        console.print(f"[cyan]{event}[/] {source} → {target} {json.dumps(data)[:200]}", highlight=False)

    base = url or settings.bridge_url

    def ready() -> None:
        console.print(f"listening as {service} on {base} (Ctrl-C to stop)", highlight=False)

    run_job(tail_events(settings, service, base, client_ssl(settings, insecure=insecure), show, ready))
