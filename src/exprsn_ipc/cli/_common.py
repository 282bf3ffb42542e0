"""Shared pieces of the CLI: settings at the edge, logging, TLS trust."""

from __future__ import annotations

import logging
import ssl
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from exprsn_ipc.errors import ConfigError
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
    """The CLI, not the library, decides where log records go."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
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
