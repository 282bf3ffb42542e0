"""HTTPS for a service: uvicorn with TLS, an HTTP→HTTPS redirect and graceful shutdown.

The Python counterpart of the original ``HTTPSServerManager`` (reference §5),
following the guide's step 5::

    manager = HTTPSServerManager("exprsn-timeline", 3004, http_port=3003, settings=settings)
    manager.on_shutdown(ipc.disconnect)            # step 8: hooks run after the servers drain
    await manager.serve_forever(app)              # start, handle SIGTERM/SIGINT, stop

Certificates come from ``CERTS_DIR`` (``settings.certs_dir``) in this order:
explicit ``cert_path``/``key_path``; the service's own
``exprsn-<service>-cert.pem``/``-key.pem``; the shared
``localhost-cert.pem``/``localhost-key.pem``. With ``TLS_ENABLED=false`` or no
certificate the app is served over plain HTTP on ``port``.

The server pieces (:class:`ManagedServer`, :class:`ServerSet`,
:class:`HTTPSRedirectApp`) live in :mod:`.servers` and the TLS context in
:mod:`.tls`; they are re-exported here. Differences from the original are
listed in ``docs/https-and-bypass.md``.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import uvicorn
from starlette.types import ASGIApp
from uvicorn.lifespan.on import LifespanOn

from exprsn_ipc.certs.authority import certificate_info
from exprsn_ipc.errors import CertificateError, ConfigError, ServerStartError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.settings import Settings
from exprsn_ipc.web import tls
from exprsn_ipc.web.health import HealthFallback
from exprsn_ipc.web.servers import (
    HTTPSRedirectApp,
    ManagedServer,
    ServerSet,
    bind_sockets,
    check_redirect_host,
    close_sockets,
    url_host,
)
from exprsn_ipc.web.signals import ShutdownSignals
from exprsn_ipc.web.startup import StartupGuard
from exprsn_ipc.web.tls import find_service_certificate, server_ssl_context

__all__ = [
    "HTTPSRedirectApp",
    "HTTPSServerManager",
    "ManagedServer",
    "ServerSet",
    "ShutdownHook",
    "create_servers",
]

log = get_logger(__name__)

#: A shutdown hook: a plain or async callable taking no arguments.
ShutdownHook = Callable[[], Awaitable[Any] | Any]
LifespanMode = Literal["auto", "on", "off"]

#: Extra time, beyond ``shutdown_timeout``, before server tasks are cancelled.
_STOP_GRACE_S: Final = 5.0


# --------------------------------------------------------------------------- #
# The manager
# --------------------------------------------------------------------------- #


@dataclass(slots=True)
class _Plan:
    kind: Literal["https", "http"]
    app: ASGIApp
    port: int
    ssl: ssl.SSLContext | None
    sockets: list[socket.socket] = field(default_factory=list)


class HTTPSServerManager:
    """Runs a service's ASGI app over HTTPS (and HTTP), and shuts it down gracefully.

    Args:
        service_name: the service (``exprsn-timeline`` or ``timeline``); selects
            its certificate and names it in logs.
        port: the app's port; HTTPS listens here unless ``https_port`` is given.
        https_port: the HTTPS port (default ``port``).
        http_port: a second, plain HTTP port next to HTTPS (used only when TLS is
            on and ``enable_http``): a 301 redirect to HTTPS, or the app itself
            when ``redirect_http`` is false.
        enable_http, redirect_http: as in the original.
        settings: supplies ``TLS_ENABLED`` and ``CERTS_DIR``.
        certs_dir: overrides ``settings.certs_dir``.
        cert_path, key_path: an explicit pair (both or neither; must exist).
        mtls: require a client certificate issued by ``ca-cert.pem`` (or
            ``ca_path``); needs TLS, so with no certificate start() fails.
        ca_path: the trust store for ``mtls`` (default ``<certs_dir>/ca-cert.pem``).
        host: the address to listen on (default loopback only).
        redirect_host: the host the redirect points to (never the Host header).
        shutdown_timeout: seconds in-flight requests get on :meth:`stop` before
            they are cancelled (uvicorn counts whole seconds, so it is rounded up).
        lifespan: the app's lifespan protocol (``"auto"`` as in uvicorn); it
            runs once per manager, not once per server.
        backlog: the listen backlog.
    """

    def __init__(
        self,
        service_name: str,
        port: int = 3000,
        https_port: int | None = None,
        http_port: int | None = None,
        enable_http: bool = True,
        redirect_http: bool = True,
        *,
        settings: Settings,
        certs_dir: Path | str | None = None,
        cert_path: Path | str | None = None,
        key_path: Path | str | None = None,
        mtls: bool = False,
        ca_path: Path | str | None = None,
        host: str = "127.0.0.1",
        redirect_host: str = "localhost",
        shutdown_timeout: float = 10.0,
        lifespan: LifespanMode = "auto",
        backlog: int = 2048,
    ) -> None:
        if (cert_path is None) != (key_path is None):
            raise ConfigError("cert_path and key_path must be given together")
        if shutdown_timeout < 0:
            raise ConfigError("shutdown_timeout must not be negative")
        for label, value in (("port", port), ("https_port", https_port), ("http_port", http_port)):
            if value is not None and not 0 <= value < 65536:
                raise ConfigError(f"{label} must be between 0 and 65535, got {value}")
        check_redirect_host(redirect_host)
        self.service_name = service_name
        self.port = port
        self.https_port = port if https_port is None else https_port
        self.http_port = http_port
        self.enable_http = enable_http
        self.redirect_http = redirect_http
        self.settings = settings
        self.certs_dir = Path(certs_dir) if certs_dir is not None else settings.certs_dir
        self.mtls = mtls
        self.ca_path = Path(ca_path) if ca_path is not None else self.certs_dir / "ca-cert.pem"
        self.host = host
        self.redirect_host = redirect_host
        self.shutdown_timeout = shutdown_timeout
        self.lifespan_mode: LifespanMode = lifespan
        self.backlog = backlog

        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        if settings.tls_enabled:
            if cert_path is not None and key_path is not None:
                self.cert_path, self.key_path = Path(cert_path), Path(key_path)
            else:
                found = self._find_certificate()
                if found is not None:
                    self.cert_path, self.key_path = found
        #: True when the app will be served over HTTPS.
        self.tls_enabled = self.cert_path is not None

        self._hooks: list[ShutdownHook] = []
        self._servers: list[tuple[ManagedServer, asyncio.Task[None]]] = []
        self._server_set: ServerSet | None = None
        self._lifespan: LifespanOn | None = None
        self._state: Literal["new", "starting", "running", "stopping", "stopped"] = "new"
        self._stop_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._stop_requested = asyncio.Event()
        #: Set once :meth:`start` has returned (every server is listening).
        self.ready = asyncio.Event()
        self._signals = ShutdownSignals(self.service_name, self._on_signal)

    # Certificates -----------------------------------------------------------------
    def _find_certificate(self) -> tuple[Path, Path] | None:
        return find_service_certificate(self.certs_dir, self.service_name)

    def ssl_context(self) -> ssl.SSLContext:
        """The server TLS context: TLS ≥ 1.2, server cipher order, optional mTLS.

        Raises:
            CertificateError: the certificate, key or CA file cannot be loaded.
            ConfigError: TLS is off.
        """
        if self.cert_path is None or self.key_path is None:
            raise ConfigError("TLS is not enabled: no certificate (or TLS_ENABLED=false)")
        tls.check_serving_certificate(self.settings, self.service_name, self.cert_path)
        return server_ssl_context(self.cert_path, self.key_path, mtls=self.mtls, ca_path=self.ca_path)

    def get_certificate_info(self) -> dict[str, Any] | None:
        """The original's ``getCertificateInfo()`` shape, or ``None`` (TLS off or unreadable)."""
        if self.cert_path is None:
            return None
        try:
            return certificate_info(self.cert_path).to_dict()
        except CertificateError as exc:
            log.debug("cannot read certificate info of %s: %s", self.cert_path, exc)
            return None

    # Start --------------------------------------------------------------------------
    @property
    def servers(self) -> ServerSet | None:
        """The :class:`ServerSet` of the running manager, else ``None``."""
        return self._server_set

    @property
    def running(self) -> bool:
        return self._state == "running"

    def _plan(self, app: ASGIApp) -> list[_Plan]:
        if self.mtls and not self.tls_enabled:
            raise ConfigError(
                f"{self.service_name}: mtls=True needs TLS, but TLS is off "
                f"(TLS_ENABLED={str(self.settings.tls_enabled).lower()}, certificate found: no)"
            )
        if not self.tls_enabled:
            if self.settings.tls_enabled:  # fails closed in production
                tls.refuse_plain_http(self.settings, self.service_name, self.certs_dir)
            if self.enable_http and self.http_port:
                log.info("%s: TLS is off, so the app is served on port %d, not http_port", self.service_name, self.port)
            return [_Plan("http", app, self.port, None)]
        plans = [_Plan("https", app, self.https_port, self.ssl_context())]
        if self.enable_http and self.http_port:
            plans.append(_Plan("http", app, self.http_port, None))
        return plans

    async def start(self, app: ASGIApp) -> ServerSet:
        """Listen and serve ``app``; return once every server accepts connections.

        Raises:
            ServerStartError: a port is in use (named in the message), cannot be
                bound, or the app's lifespan startup failed. Nothing is left
                listening and the lifespan is shut down again.
            CertificateError: the certificate or key cannot be loaded.
            ConfigError: bad options (for example ``mtls`` without TLS).
        """
        if self._state != "new":
            raise ServerStartError(f"{self.service_name}: start() called on a manager that is {self._state}")
        self._state = "starting"
        app = StartupGuard(HealthFallback(app, self.service_name))  # /health; start-up errors in one line
        plans: list[_Plan] = []
        try:
            plans = self._plan(app)
            for plan in plans:
                plan.sockets = bind_sockets(self.host, plan.port, self.backlog)
                plan.port = plan.sockets[0].getsockname()[1]
            redirect = len(plans) == 2 and self.redirect_http
            if redirect:
                plans[1].app = HTTPSRedirectApp(self.redirect_host, plans[0].port)
            app_state = await self._start_lifespan(app)
            for plan in plans:
                await self._start_server(plan, {} if plan.app is not app else app_state)
        except BaseException:
            close_sockets([plan.sockets for plan in plans])
            await self._abort_start()
            raise
        urls: dict[str, str] = {plan.kind: f"{plan.kind}://{url_host(self.host)}:{plan.port}" for plan in plans}
        by_kind = {server.name: server for server, _ in self._servers}
        self._server_set = ServerSet(https=by_kind.get("https"), http=by_kind.get("http"), urls=urls, redirect=redirect)
        self._state = "running"
        self.ready.set()
        for server, task in self._servers:
            task.add_done_callback(self._make_exit_watcher(server))
        return self._server_set

    async def _start_lifespan(self, app: ASGIApp) -> dict[str, Any]:
        if self.lifespan_mode == "off":
            return {}
        config = uvicorn.Config(app, lifespan=self.lifespan_mode, log_config=None)
        lifespan = LifespanOn(config)
        self._lifespan = lifespan
        await lifespan.startup()
        if lifespan.should_exit:
            reason = getattr(app, "startup_error", None) or "see the log"
            raise ServerStartError(f"{self.service_name}: application startup failed: {reason}")
        return lifespan.state

    async def _start_server(self, plan: _Plan, app_state: dict[str, Any]) -> None:
        config = uvicorn.Config(
            plan.app,
            host=self.host,
            port=plan.port,
            lifespan="off",
            log_config=None,
            timeout_graceful_shutdown=math.ceil(self.shutdown_timeout),
            backlog=self.backlog,
        )
        config.load()
        # Our context, not uvicorn's: it enforces TLS 1.2+ and optional mTLS.
        config.ssl = plan.ssl
        # Settled when the server listens or its task ends, whichever comes first.
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(_: object = None) -> None:
            if not outcome.done():
                outcome.set_result(None)

        server = ManagedServer(config, name=plan.kind, app_state=app_state, on_ready=settle)
        task = asyncio.create_task(server.serve(sockets=plan.sockets), name=f"{self.service_name}-{plan.kind}")
        self._servers.append((server, task))
        task.add_done_callback(settle)
        try:
            await outcome
        finally:
            task.remove_done_callback(settle)
        if not server.ready.is_set():
            cause = task.exception() if task.done() and not task.cancelled() else None
            message = f"{self.service_name}: {plan.kind} server on port {plan.port} failed to start"
            raise ServerStartError(message) from cause
        plan.sockets = []  # now owned (and closed) by uvicorn
        redirect = plan.kind == "http" and isinstance(plan.app, HTTPSRedirectApp)
        log.info(
            "%s %s listening on %s://%s:%d%s",
            self.service_name,
            plan.kind.upper(),
            plan.kind,
            url_host(self.host),
            plan.port,
            " (redirect: HTTPS)" if redirect else "",
            extra={"service": self.service_name, "port": plan.port, "tls": plan.ssl is not None},
        )

    async def _abort_start(self) -> None:
        await self._stop_servers()
        await self._stop_lifespan()
        self._servers.clear()
        self._lifespan = None
        self._state = "new"

    # Stop ---------------------------------------------------------------------------
    def on_shutdown(self, hook: ShutdownHook) -> ShutdownHook:
        """Register ``hook`` (sync or async, no arguments) to run on :meth:`stop`.

        Hooks run in registration order after the servers have drained (the
        guide's step 8: IPC disconnect, database close…). A failing hook is
        logged and the others still run. Usable as a decorator.
        """
        self._hooks.append(hook)
        return hook

    def _make_exit_watcher(self, server: ManagedServer) -> Callable[[asyncio.Task[None]], None]:
        def watcher(task: asyncio.Task[None]) -> None:
            if self._state != "running":
                return
            error = task.exception() if not task.cancelled() else None
            self._failure = error
            log.error(
                "%s: %s server exited unexpectedly; shutting down",
                self.service_name,
                server.name,
                exc_info=error,
            )
            self._begin_stop()

        return watcher

    def _begin_stop(self) -> asyncio.Task[None]:
        if self._stop_task is None:
            self._state = "stopping"
            self._stop_requested.set()
            for server, _ in self._servers:
                server.should_exit = True
            self._stop_task = asyncio.get_running_loop().create_task(
                self._shutdown(), name=f"{self.service_name}-shutdown"
            )
        return self._stop_task

    async def stop(self) -> None:
        """Stop gracefully: stop accepting, let in-flight requests finish, run hooks.

        In-flight requests get ``shutdown_timeout`` seconds, then are cancelled.
        Then the app's lifespan shutdown runs, then the shutdown hooks in
        order. Idempotent: concurrent and repeated calls wait for the same
        shutdown. Cancelling the caller does not interrupt the shutdown.
        A hook raising ``CancelledError`` ends it and propagates.
        """
        task = self._begin_stop()
        if asyncio.current_task() is task:  # stop() called from a shutdown hook
            return
        await asyncio.shield(task)

    async def _shutdown(self) -> None:
        try:
            await self._stop_servers()
            await self._stop_lifespan()
            await self._run_hooks()
        finally:
            self.remove_signal_handlers()
            self._state = "stopped"
            log.info("%s stopped", self.service_name)

    async def _stop_servers(self) -> None:
        if not self._servers:
            return
        for server, _ in self._servers:
            server.should_exit = True
        tasks = {task for _, task in self._servers}
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout + _STOP_GRACE_S)
        if pending:
            log.error("%s: servers did not stop in time; cancelling them", self.service_name)
            for server, _ in self._servers:
                server.force_exit = True
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
        for server, task in self._servers:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s: %s server failed", self.service_name, server.name, exc_info=task.exception())
            # A server that crashed or was cancelled skipped uvicorn's shutdown: close its listeners.
            for listener in getattr(server, "servers", ()):
                listener.close()

    async def _stop_lifespan(self) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is None or lifespan.should_exit:
            return
        if any(server.force_exit for server, _ in self._servers):
            return
        await lifespan.shutdown()

    async def _run_hooks(self) -> None:
        for hook in list(self._hooks):
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: shutdown hook %s failed", self.service_name, _hook_name(hook))

    # Signals ------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT call :meth:`stop` (a second one forces the exit).

        The previous handlers come back when the manager stops (or on
        :meth:`remove_signal_handlers`). Outside the main thread, nothing is
        installed (a warning is logged).
        """
        self._signals.install()

    def remove_signal_handlers(self) -> None:
        """Undo :meth:`install_signal_handlers`."""
        self._signals.remove()

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stop_task is None:
            log.info("%s received, shutting down gracefully", name, extra={"service": self.service_name})
            self._begin_stop()
            return
        log.warning("%s received again: not waiting for in-flight requests", name)
        for server, _ in self._servers:
            server.force_exit = True

    async def serve_forever(self, app: ASGIApp, *, install_signal_handlers: bool = True) -> None:
        """Start, then wait until stopped by a signal or :meth:`stop`, and finish stopping.

        If the waiting task is cancelled, the manager is stopped before the
        cancellation propagates. If a server crashed, the manager stops and
        its exception is raised here (so the process does not exit 0).
        """
        await self.start(app)
        if install_signal_handlers:
            self.install_signal_handlers()
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop()
        if self._failure is not None:
            raise self._failure


def _hook_name(hook: ShutdownHook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


async def create_servers(app: ASGIApp, **options: Any) -> tuple[HTTPSServerManager, ServerSet]:
    """The original's ``createServers(app, opts)``: build a manager and start it.

    ``options`` are :class:`HTTPSServerManager`'s arguments by keyword
    (``service_name``, ``port``, ``settings``…). Returns the manager (needed to
    stop) and its :class:`ServerSet`.
    """
    manager = HTTPSServerManager(**options)
    return manager, await manager.start(app)
