"""``exprsn-ipc dlq``: inspect and replay the dead letters of durable delivery.

Dead letters live in the Redis stream ``ipc:dlq:<service>`` (see ``docs/durable.md``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rich.table import Table

from exprsn_ipc.cli._common import console, fail, load_settings
from exprsn_ipc.errors import IPCError
from exprsn_ipc.protocol.envelope import Envelope, validate_service_name
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport.redis import (
    RedisEndpoint,
    dlq_key,
    durable_status,
    list_dead_letters,
    redact_url,
    replay_dead_letters,
    stream_key,
)

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    help="Dead letters of durable delivery (Redis streams ipc:dlq:<service>).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", metavar="URL", help="Redis to use [default: REDIS_URL, or REDIS_HOST/PORT/DB]."),
]


def _service(name: str) -> str:
    try:
        return validate_service_name(name)
    except IPCError as exc:
        fail(str(exc))


def _run(settings: Settings, action: Callable[[Redis], Any]) -> Any:
    url = settings.effective_redis_url

    async def main() -> Any:
        client = RedisEndpoint.from_url(url).client(client_name=None, socket_timeout=5.0, connect_timeout=2.0)
        try:
            return await action(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except (RedisConnectionError, OSError) as exc:
        fail(f"cannot reach Redis at {redact_url(url)} ({exc}): start redis-server or fix REDIS_URL/--redis-url", 1)
    except RedisError as exc:
        fail(f"Redis at {redact_url(url)}: {exc}", 1)


def _when(ms: int) -> str:
    if ms <= 0:
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dlq_app.command("list")
def list_command(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="Service name, e.g. exprsn-herald.")],
    count: Annotated[
        int, typer.Option("--count", "-n", min=1, metavar="N", help="Show at most this many (oldest first).")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """List the dead letters of SERVICE, oldest first."""
    name = _service(service)
    settings = load_settings(read_only=True, redis_url=redis_url)

    async def action(client: Redis) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await durable_status(client, name), await list_dead_letters(client, name, count)

    status, letters = _run(settings, action)
    if as_json:
        console.print_json(json.dumps({"status": status, "deadLetters": letters}))
        return
    console.print(
        f"{status['dlq']}: {status['deadLetters']} dead letters   "
        f"{status['stream']}: {status['length']} entries, {status['pending']} pending, "
        f"{status['consumers']} consumers",
        highlight=False,
    )
    if not letters:
        return
    table = Table("id", "original id", "event", "source", "deliveries", "failed at", "reason")
    for letter in letters:
        table.add_row(
            letter["id"],
            letter["originalId"],
            str(letter["event"]),
            str(letter["source"]),
            str(letter["deliveries"]),
            _when(letter["failedAt"]),
            letter["reason"],
        )
    console.print(table)


@dlq_app.command("replay")
def replay_command(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="Service name, e.g. exprsn-herald.")],
    ids: Annotated[
        list[str] | None, typer.Option("--id", metavar="ID", help="Dead-letter id to replay (repeatable; default all).")
    ] = None,
    resign: Annotated[
        bool,
        typer.Option(
            "--resign",
            help="Sign each envelope again with IPC_BROKER_KEY (for expired tokens; the message gets a new token id).",
        ),
    ] = False,
    ttl: Annotated[
        int | None, typer.Option("--ttl", min=1, metavar="SECONDS", help="Token lifetime with --resign (s).")
    ] = None,
    redis_url: RedisUrl = None,
) -> None:
    """Move dead letters of SERVICE back to its stream for another round of delivery."""
    name = _service(service)
    settings = load_settings(redis_url=redis_url)
    transform = _resigner(settings, ttl) if resign else None

    async def action(client: Redis) -> tuple[int, int]:
        moved = await replay_dead_letters(client, name, ids, transform=transform)
        return moved, int(await client.xlen(dlq_key(name)))

    moved, left = _run(settings, action)
    console.print(
        f"replayed {moved} dead letters to {stream_key(name)}; {left} left in {dlq_key(name)}", highlight=False
    )
    if ids and moved < len(set(ids)):
        console.print(
            f"[yellow]{len(set(ids)) - moved} of the given ids were not replayed (unknown, or see the log)[/]"
        )


def _resigner(settings: Settings, ttl: int | None) -> Callable[[bytes], bytes]:
    signers: dict[str, BrokerTokenManager] = {}

    def resign(raw: bytes) -> bytes:
        old = Envelope.decode(raw)
        signer = signers.get(old.source)
        if signer is None:
            signer = signers[old.source] = BrokerTokenManager(service_name=old.source, settings=settings)
        new = signer.sign_envelope(
            old.event,
            old.data,
            target=old.target,
            operation=old.operation,
            require_ack=old.require_ack,
            ttl=ttl,
            metadata=old.metadata,
        )
        return new.encode()

    return resign
