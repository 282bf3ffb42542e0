"""The ``exprsn-ipc`` command."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from exprsn_ipc import __version__
from exprsn_ipc.cli._common import client_ssl, configure_logging, console, fail, load_settings
from exprsn_ipc.cli.certs import certs_app
from exprsn_ipc.cli.demo import demo
from exprsn_ipc.cli.dlq import dlq_app
from exprsn_ipc.cli.doctor import doctor
from exprsn_ipc.cli.redis_acl import redis_app
from exprsn_ipc.cli.serve import serve
from exprsn_ipc.errors import IPCError

__all__ = ["app", "main"]

app = typer.Typer(
    name="exprsn-ipc",
    help="The Exprsn IPC system: Bridge, IPC workers, certificates and checks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(certs_app, name="certs")
app.add_typer(dlq_app, name="dlq")
app.add_typer(redis_app, name="redis")
app.command()(serve)
app.command()(doctor)
app.command()(demo)


def main() -> None:
    app()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(__version__)
        raise typer.Exit(0)


GUIDE_ENV = """\
# Written by `exprsn-ipc init`: the migration guide's settings.
# TLS Configuration
TLS_ENABLED=true
CERTS_DIR={certs_dir}

# IPC Configuration
IPC_BROKER_KEY={key}
IPC_TOKEN_TTL=300
IPC_RATE_LIMIT=true
IPC_RATE_WINDOW=60000
IPC_RATE_MAX=1000

# Development Bypass (only honoured with NODE_ENV=development, and only from loopback)
DEV_BYPASS={dev_bypass}
IPC_BYPASS_AUTH={dev_bypass}
NODE_ENV={node_env}

# Bridge
BRIDGE_URL=https://localhost:3010
BRIDGE_PORT=3010
IPC_TRANSPORT=bridge
# REDIS_URL=redis://localhost:6379/0
"""


@app.command()
def init(
    path: Annotated[Path, typer.Option("--path", help="The .env file to write.")] = Path(".env"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing IPC_BROKER_KEY.")] = False,
    production: Annotated[bool, typer.Option("--production", help="NODE_ENV=production, bypass off.")] = False,
    certs_dir: Annotated[str, typer.Option("--certs-dir")] = "./certs",
) -> None:
    """Write a .env with a fresh broker key and the guide's defaults."""
    key = secrets.token_hex(32)
    if path.exists():
        lines = path.read_text("utf-8").splitlines()
        has_key = any(line.strip().startswith("IPC_BROKER_KEY=") and line.split("=", 1)[1].strip() for line in lines)
        if has_key and not force:
            console.print(f"{path} already has an IPC_BROKER_KEY; kept it (use --force to replace it)")
            return
        kept = [line for line in lines if not line.strip().startswith("IPC_BROKER_KEY=")]
        kept.append(f"IPC_BROKER_KEY={key}")
        _write_private(path, "\n".join(kept) + "\n")
        console.print(f"{'replaced' if has_key else 'added'} IPC_BROKER_KEY in {path}")
        return
    text = GUIDE_ENV.format(
        key=key,
        certs_dir=certs_dir,
        dev_bypass="false" if production else "true",
        node_env="production" if production else "development",
    )
    _write_private(path, text)
    console.print(f"wrote {path} with a new 256-bit IPC_BROKER_KEY")
    console.print("share the same IPC_BROKER_KEY with every service of the fleet (Node.js services included)")


def _write_private(path: Path, text: str) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing .env keeps its mode otherwise
        fh.write(text)


@app.command()
def bridge(
    host: Annotated[str | None, typer.Option("--host", help="Interface to bind (BRIDGE_HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (BRIDGE_PORT, 3010).")] = None,
    log_level: Annotated[str | None, typer.Option("--log-level")] = None,
) -> None:
    """Run the Bridge: Socket.IO IPC router and HTTP API (HTTPS on 3010 by default)."""
    settings = load_settings(bridge_host=host, bridge_port=port)
    configure_logging(log_level or settings.log_level)
    from exprsn_ipc.cli.serving import run_bridge

    try:
        asyncio.run(run_bridge(settings))
    except IPCError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        pass


@app.command()
def check(
    url: Annotated[str | None, typer.Option("--url", help="Bridge URL (BRIDGE_URL).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Do not verify the Bridge certificate.")] = False,
) -> None:
    """Run the guide's 8 IPC checks against the Bridge (test-ipc-communication.js)."""
    settings = load_settings()
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


def _bridge_token(settings: Any, service: str) -> str:
    from exprsn_ipc.protocol.tokens import BrokerTokenManager

    return BrokerTokenManager(service_name=service, settings=settings).generate_token(operation="cli")


@app.command()
def stats(
    url: Annotated[str | None, typer.Option("--url")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    insecure: Annotated[bool, typer.Option("--insecure")] = False,
) -> None:
    """Show the Bridge's IPC statistics (GET /api/ipc/stats)."""
    import httpx
    from rich.table import Table

    settings = load_settings()
    base = (url or settings.bridge_url).rstrip("/")
    try:
        response = httpx.get(f"{base}/api/ipc/stats", verify=client_ssl(settings, insecure=insecure), timeout=5)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot read {base}/api/ipc/stats: {exc}", 1)
    if as_json:
        console.print_json(json.dumps(body))
        return
    data = body.get("data", {})
    console.print(
        f"active services: {data.get('activeServices')}   connections: {data.get('activeConnections')}   "
        f"rate limits: {data.get('rateLimits')}"
    )
    table = Table("service", "replicas", "pid", "host", "via")
    for entry in data.get("services", []):
        table.add_row(
            str(entry.get("name")),
            str(entry.get("replicas", "—")),
            str(entry.get("pid")),
            str(entry.get("hostname")),
            str(entry.get("via", "bus")),
        )
    console.print(table)
    instances = data.get("instances", [])
    if instances:
        replicas = Table("replica", "service", "in flight", "transport", "version")
        for record in instances:
            replicas.add_row(
                str(record.get("id")),
                str(record.get("service")),
                str(record.get("inFlight")),
                str(record.get("transport")),
                str(record.get("version", "—")),
            )
        console.print(replicas)
    console.print(data.get("counters", {}))


@app.command()
def emit(
    event: Annotated[str, typer.Argument(help="Event name, e.g. post:created.")],
    payload: Annotated[str, typer.Argument(help="JSON payload.")] = "{}",
    target: Annotated[str, typer.Option("--target", help="Service name or broadcast.")] = "broadcast",
    service: Annotated[str, typer.Option("--as", help="Service to sign as.")] = "exprsn-cli",
    url: Annotated[str | None, typer.Option("--url")] = None,
    insecure: Annotated[bool, typer.Option("--insecure")] = False,
) -> None:
    """Publish one event through the Bridge (POST /api/ipc/emit)."""
    import httpx

    settings = load_settings()
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"the payload is not JSON: {exc}")
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
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot reach {base}: {exc}", 1)
    if not body.get("success"):
        fail(f"{body.get('error')}: {body.get('message')}", 1)
    result = body["result"]
    console.print(
        f"published {result['event']} to {result['target']} as {result['source']}: {result['receivers']} receivers"
    )


@app.command()
def listen(
    events: Annotated[list[str] | None, typer.Argument(help="Only these events (default: all).")] = None,
    service: Annotated[str, typer.Option("--as", help="Namespace/service to listen as.")] = "exprsn-cli",
    url: Annotated[str | None, typer.Option("--url")] = None,
    insecure: Annotated[bool, typer.Option("--insecure")] = False,
) -> None:
    """Tail the events reaching a service (broadcasts and its own) until Ctrl-C."""
    settings = load_settings()
    wanted = set(events or [])
    from exprsn_ipc.cli.serving import tail_events

    def show(event: str, data: Any, meta: Any) -> None:
        if wanted and event not in wanted:
            return
        source = meta.get("source") if isinstance(meta, dict) else "?"
        target = meta.get("target") if isinstance(meta, dict) else "?"
        console.print(f"[cyan]{event}[/] {source} → {target} {json.dumps(data)[:200]}", highlight=False)

    try:
        asyncio.run(
            tail_events(settings, service, url or settings.bridge_url, client_ssl(settings, insecure=insecure), show)
        )
    except KeyboardInterrupt:
        pass
    except IPCError as exc:
        fail(str(exc), 1)
