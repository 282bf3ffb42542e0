"""``exprsn-ipc init``: the guide's "Update Environment Variables" step, as a .env file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from exprsn_ipc.cli._common import console

__all__ = ["GUIDE_ENV", "init"]


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


def init(
    path: Annotated[Path, typer.Option("--path", metavar="FILE", help="The .env file to write.")] = Path(".env"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing IPC_BROKER_KEY.")] = False,
    production: Annotated[
        bool, typer.Option("--production", help="Write NODE_ENV=production with the bypass off.")
    ] = False,
    certs_dir: Annotated[
        str, typer.Option("--certs-dir", metavar="DIR", help="CERTS_DIR to write: where the certificates are.")
    ] = "./certs",
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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing .env keeps its mode otherwise
        fh.write(text)
