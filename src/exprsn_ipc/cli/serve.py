"""``exprsn-ipc serve module:app --service NAME``: the guide's 8 steps in one command.

It imports any ASGI app and serves it as a migrated service: an IPC worker for
the service (``request.state.ipc``), the development bypass in front of the
app, ``/health`` when the app has none, HTTPS with the service's certificate
(plus an optional HTTP redirect), and graceful shutdown that disconnects IPC.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from exprsn_ipc.cli._common import LogLevelOption, configure_logging, console, fail, load_settings, run_job
from exprsn_ipc.errors import ConfigError
from exprsn_ipc.protocol.constants import KNOWN_SERVICES, full_service_name


def import_app(spec: str) -> Any:
    """Import ``module:attribute`` (``attribute`` may be a factory called with no arguments)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"expected module:app, got {spec!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    app: Any = module
    for part in attribute.split("."):
        app = getattr(app, part, None)
        if app is None:
            raise ConfigError(f"{module_name!r} has no attribute {attribute!r}")
    return app


def serve(
    app: Annotated[str, typer.Argument(metavar="MODULE:APP", help="The ASGI app, as module:attribute.")],
    service: Annotated[
        str, typer.Option("--service", metavar="NAME", help="The exact service name, e.g. exprsn-timeline.")
    ],
    port: Annotated[
        int | None, typer.Option("--port", metavar="PORT", help="HTTPS port [default: the service's known port].")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", metavar="PORT", help="Also redirect HTTP on this port.")
    ] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Interface to bind.")] = "127.0.0.1",
    factory: Annotated[bool, typer.Option("--factory", help="Call the attribute to build the app.")] = False,
    log_level: LogLevelOption = None,
) -> None:
    """Serve any ASGI app as a migrated service: IPC, bypass, HTTPS, graceful shutdown."""
    settings = load_settings()
    configure_logging(log_level or settings.log_level)
    name = full_service_name(service)
    listen_port = port or KNOWN_SERVICES.get(name) or 3000
    try:
        target = import_app(app)
        if factory:
            target = target()
    except ConfigError as exc:
        fail(str(exc))
    run_job(_run(target, name, listen_port, http_port, host, settings))


async def _run(app: Any, service: str, port: int, http_port: int | None, host: str, settings: Any) -> None:
    from exprsn_ipc.web.bypass import log_bypass_status
    from exprsn_ipc.web.https import HTTPSServerManager
    from exprsn_ipc.web.integration import app_worker, migrate_app
    from exprsn_ipc.web.tls import ensure_dev_certificates
    from exprsn_ipc.worker.core import IPCWorker

    ipc = app_worker(app)
    if ipc is None:
        log_bypass_status(settings)  # step 2; an app with its own worker has logged it
        ipc = IPCWorker(service, settings=settings)
    elif ipc.service_name != service:
        raise ConfigError(
            f"the app wires its own IPC worker for {ipc.service_name}, not {service}: "
            f"run with --service {ipc.service_name}"
        )
    else:
        console.print(f"using the app's own IPC worker for {service} (FastAPI(lifespan=ipc.lifespan))")
    ensure_dev_certificates(settings, service)
    manager = HTTPSServerManager(
        service,
        port,
        http_port=http_port,
        enable_http=http_port is not None,
        redirect_http=True,
        settings=settings,
        host=host,
    )
    await manager.serve_forever(migrate_app(app, ipc, settings=settings))
