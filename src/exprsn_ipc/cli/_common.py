"""Shared pieces of the CLI: settings at the edge, logging, TLS trust."""

from __future__ import annotations

import logging
import ssl
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from exprsn_ipc.errors import ConfigError
from exprsn_ipc.logsafe import ClipArgs
from exprsn_ipc.settings import Settings

console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def load_settings(**overrides: Any) -> Settings:
    """Build the one settings object; a bad value ends the command with its message."""
    try:
        return Settings.load(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(str(exc))


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
