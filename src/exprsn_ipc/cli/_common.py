"""Shared pieces of the CLI: settings at the edge, logging, TLS trust."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from exprsn_ipc.errors import ConfigError, IPCError
from exprsn_ipc.logsafe import ClipArgs
from exprsn_ipc.settings import Settings

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one copyable line


#: ``--url`` of the commands that talk to a running Bridge.
UrlOption = Annotated[str | None, typer.Option("--url", metavar="URL", help="The Bridge's URL [default: BRIDGE_URL].")]
#: ``--log-level`` of the commands that run servers.
LogLevelOption = Annotated[
    str | None,
    typer.Option("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR [default: LOG_LEVEL]."),
]


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def load_settings(*, read_only: bool = False, **overrides: Any) -> Settings:
    """Build the one settings object; a bad value ends the command with its message.

    ``read_only`` commands (check, stats, emit, listen, doctor, certs show/verify)
    never write a file: in development they use the key file the Bridge wrote,
    if any, instead of creating one that the Bridge would not know.
    """
    try:
        return Settings.load(create_key=not read_only, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(str(exc))


def require_broker_key(settings: Settings) -> None:
    """End the command with the next step when there is no broker key to sign with."""
    if settings.ipc_broker_key is None:
        fail(
            "no broker key: set IPC_BROKER_KEY to the Bridge's key (in .env, or run this command in the "
            f"Bridge's folder, where it keeps {settings.ipc_key_file})",
            2,
        )


def explain_unreachable(exc: BaseException, url: str, settings: Settings) -> str:
    """What went wrong reaching ``url``, and the next step (start it, trust the CA)."""
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or _caused_by(exc, ssl.SSLCertVerificationError):
        ca = settings.certs_dir / "ca-cert.pem"
        where = (
            f"trust {ca}"
            if ca.is_file()
            else f"there is no {ca} here: run in the folder that holds certs/ or set CERTS_DIR"
        )
        return f"the certificate of {url} is not trusted ({_clip(text)}): {where}; --insecure skips the check"
    if connection_refused(exc):
        return f"nothing answers at {url}: start the Bridge first (`exprsn-ipc bridge`) or set BRIDGE_URL/--url"
    return f"cannot reach {url}: {_clip(text)}"


def connection_refused(exc: BaseException) -> bool:
    """Whether nothing listens where ``exc`` tried to connect (httpx, aiohttp or a plain socket)."""
    text = str(exc)
    return _caused_by(exc, ConnectionRefusedError) or "connection attempts failed" in text.lower() or "refused" in text


def explain_refusal(message: str) -> str:
    """A refusal from the Bridge, with the next step when it is about the broker token."""
    if "signature" in message or "UNAUTHORIZED" in message:
        return f"{message}: the Bridge refused the broker token; compare IPC_BROKER_KEY with the Bridge's"
    return message


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def run_job(job: Coroutine[Any, Any, None]) -> None:
    """Run a long-running command until it ends, or until SIGINT/SIGTERM stops it.

    A stop the user asked for is a success: exit status 0 and no traceback. Jobs
    that install their own signal handlers (the server manager) replace these.
    """

    async def supervise() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        stopped: list[int] = []

        def stop(sig: int) -> None:
            stopped.append(sig)
            if task is not None:
                task.cancel()

        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop, sig)
        try:
            await job
        except asyncio.CancelledError:
            if not stopped:
                raise
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(supervise())
    except IPCError as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:  # a Ctrl-C before or after the loop's handlers
        pass


def configure_logging(level: str = "INFO") -> None:
    """The CLI, not the library, decides where log records go.

    One line per record on stderr, formatted by the standard library: its cost is
    linear in the line's length. (Rich's handler wraps long unbroken words in about
    quadratic time, which a client could trigger with one long header.) Every
    record, ours or another library's, has its arguments clipped first.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(ClipArgs())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    for noisy in ("uvicorn.access", "engineio", "socketio", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def client_ssl(settings: Settings, *, insecure: bool = False) -> ssl.SSLContext | bool:
    """Trust for HTTPS clients: our CA when it exists, else the system store."""
    if insecure:
        return False
    ca = settings.certs_dir / "ca-cert.pem"
    if ca.is_file():
        return ssl.create_default_context(cafile=str(ca))
    return True


def operator_headers(settings: Settings) -> dict[str, str]:
    """``Authorization`` with ``IPC_OPERATOR_TOKEN`` when set: operators see a production Bridge's detail."""
    secret = settings.ipc_operator_token
    return {"authorization": f"Bearer {secret.get_secret_value()}"} if secret is not None else {}
