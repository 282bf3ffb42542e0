"""The ``exprsn-ipc`` command.

Commands are listed in the order the migration guide uses them: certificates and
the .env first, then the Bridge and the service, then the checks and tools.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from exprsn_ipc import __version__
from exprsn_ipc.cli._common import LogLevelOption, configure_logging, console, load_settings, run_job
from exprsn_ipc.cli.bus import check, emit, listen, stats
from exprsn_ipc.cli.certs import certs_app
from exprsn_ipc.cli.demo import demo
from exprsn_ipc.cli.dlq import dlq_app
from exprsn_ipc.cli.doctor import doctor
from exprsn_ipc.cli.envfile import init
from exprsn_ipc.cli.policy import policy_app
from exprsn_ipc.cli.redis_acl import redis_app
from exprsn_ipc.cli.serve import serve

__all__ = ["app", "main"]

#: The guide's order: prerequisites, start the Bridge, then the service, then verify.
COMMAND_ORDER = (
    "certs",
    "init",
    "bridge",
    "serve",
    "check",
    "stats",
    "doctor",
    "emit",
    "listen",
    "dlq",
    "redis",
    "policy",
    "demo",
)


class _GuideOrder(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:  # typer's own or click's Context
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))


app = typer.Typer(
    cls=_GuideOrder,
    name="exprsn-ipc",
    help="The Exprsn IPC system: Bridge, IPC workers, certificates and checks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: the rich layout prints a <bool> placeholder after every flag.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"exprsn-ipc {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """The Exprsn IPC system: Bridge, IPC workers, certificates and checks."""


def bridge(
    host: Annotated[
        str | None, typer.Option("--host", metavar="HOST", help="Interface to bind [default: BRIDGE_HOST].")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", metavar="PORT", help="Port to listen on [default: BRIDGE_PORT, 3010].")
    ] = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run the Bridge: Socket.IO IPC router and HTTP API (HTTPS on 3010 by default)."""
    settings = load_settings(bridge_host=host, bridge_port=port)
    configure_logging(log_level or settings.log_level)
    from exprsn_ipc.cli.serving import run_bridge

    run_job(run_bridge(settings))


app.add_typer(certs_app, name="certs")
app.command()(init)
app.command()(bridge)
app.command()(serve)
app.command()(check)
app.command()(stats)
app.command()(doctor)
app.command()(emit)
app.command()(listen)
app.add_typer(dlq_app, name="dlq")
app.add_typer(redis_app, name="redis")
app.add_typer(policy_app, name="policy")
app.command()(demo)


def main() -> None:
    """The console script: a Ctrl-C anywhere ends the command quietly."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
