"""Run one example service: ``python -m exprsn_ipc.examples timeline [--port N] [--db PATH]``.

It reads the environment and ``.env`` like any migrated service (``IPC_BROKER_KEY``,
``BRIDGE_URL``, ``CERTS_DIR``, ``NODE_ENV``, ...), needs a running Bridge
(``exprsn-ipc bridge``), and stops gracefully on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from exprsn_ipc.errors import IPCError
from exprsn_ipc.settings import Settings
from exprsn_ipc.web.tls import ensure_dev_certificates

from . import SERVICES, load, spec_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m exprsn_ipc.examples", description=__doc__.splitlines()[0])
    parser.add_argument("service", help="one of: " + ", ".join(s.short for s in SERVICES))
    parser.add_argument("--port", type=int, help="HTTPS port (default: the service's known port)")
    parser.add_argument("--http-port", type=int, help="also redirect plain HTTP from this port (the guide: port - 1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db", type=Path, help="SQLite file (default: ./.exprsn-services/<service>.db)")
    parser.add_argument("--log-level", default=None)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    spec = spec_for(args.service)
    module = load(spec)
    settings = Settings.load()
    logging.basicConfig(level=(args.log_level or settings.log_level).upper(), format="%(name)s: %(message)s")
    ensure_dev_certificates(settings, spec.name)
    db_path = args.db or Path(".exprsn-services") / f"{spec.name}.db"
    app = module.create_app(settings, db_path=db_path)
    manager = module.create_server(app, settings, port=args.port or spec.port, http_port=args.http_port, host=args.host)
    await manager.serve_forever(app)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except IPCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
