"""``exprsn-ipc redis acl``: least-privilege Redis users for every service and the Bridge."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from exprsn_ipc.cli._common import fail
from exprsn_ipc.errors import IPCError
from exprsn_ipc.protocol.constants import KNOWN_SERVICES
from exprsn_ipc.protocol.envelope import validate_service_name
from exprsn_ipc.transport.redis.acl import BRIDGE_USER, acl_users

__all__ = ["redis_app"]

redis_app = typer.Typer(help="Redis set-up: ACL users.", no_args_is_help=True, rich_markup_mode=None)


@redis_app.command("acl")
def acl(
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service", "-s", metavar="NAME", help="A service to make a user for (repeat; default: the known ones)."
        ),
    ] = None,
    bridge: Annotated[bool, typer.Option("--bridge/--no-bridge", help="Also the Bridge's user.")] = True,
    db: Annotated[
        int, typer.Option("--db", min=0, metavar="N", help="The database the workers use (keyspace channel).")
    ] = 0,
    aclfile: Annotated[
        bool, typer.Option("--aclfile", help="Lines for a Redis aclfile instead of ACL SETUSER commands.")
    ] = False,
) -> None:
    """Print one Redis user per service (its own streams and keys, the shared registry, the
    ipc:* channels) and one for the Bridge, each with a fresh random password.

    Pipe the commands into ``redis-cli`` (or write the lines to the aclfile), then give
    each service ``REDIS_USERNAME=<its name>`` and ``REDIS_PASSWORD=<its password>``.
    """
    names = list(dict.fromkeys(service or list(KNOWN_SERVICES)))
    try:
        for name in names:
            validate_service_name(name)
    except IPCError as exc:
        fail(str(exc))
    passwords = {name: secrets.token_urlsafe(24) for name in [*names, BRIDGE_USER]}
    users = acl_users(names, passwords, bridge=bridge, db=db)
    print("# exprsn-ipc Redis users: give each process REDIS_USERNAME and REDIS_PASSWORD from its line.")
    for user in users:
        print(user.aclfile_line() if aclfile else user.command())
