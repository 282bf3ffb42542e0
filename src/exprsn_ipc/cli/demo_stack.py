"""The demo's stack: the Bridge and the five example services in one event loop.

:class:`DemoStack` starts the Bridge (embedded bus, or Redis when ``REDIS_URL``
is set) and exprsn-auth, -moderator, -herald, -timeline and -spark from the
repository's ``services/`` folder, each with its own
:class:`~exprsn_ipc.web.HTTPSServerManager` and its own
:class:`~exprsn_ipc.IPCWorker` connected to the Bridge over HTTPS with the
bridge transport, exactly as separate processes would be. Its settings come
from the demo's own folder only (:func:`demo_settings`), and its
:class:`HopRecorder` is the Bridge's route listener: it records every hop and
lets a caller await the ones it expects.

``exprsn-ipc demo`` (:mod:`exprsn_ipc.cli.demo`) runs its journey against it;
tests use it directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from exprsn_ipc.errors import DemoError
from exprsn_ipc.protocol.constants import BRIDGE_SERVICE
from exprsn_ipc.protocol.events import BusEvent
from exprsn_ipc.settings import Settings, load_or_create_key_file

if TYPE_CHECKING:  # the heavy parts are imported when the demo runs, not with every CLI command
    from exprsn_ipc.bridge import BridgeApp
    from exprsn_ipc.web.https import HTTPSServerManager

__all__ = [
    "BRIDGE_PORT",
    "DEFAULT_DIR",
    "STEP_TIMEOUT_S",
    "DemoError",
    "DemoStack",
    "Hop",
    "HopRecorder",
    "RunningService",
    "check_port_free",
    "demo_settings",
    "load_services",
]

log = logging.getLogger("exprsn_ipc.demo")

DEFAULT_DIR = Path(".exprsn-demo")
BRIDGE_PORT = 3010
#: Seconds each journey step may wait for the events it expects.
STEP_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- #
# Settings
# --------------------------------------------------------------------------- #


class _DemoSettings(Settings):
    """Settings from the demo's own values only: no ``.env``, no environment."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def demo_settings(
    workdir: Path, *, bridge_port: int, redis_url: str | None = None, log_level: str = "WARNING"
) -> Settings:
    """Development settings for the demo: key and certificates in ``workdir``, TLS on."""
    key_file = workdir / "broker.key"
    return _DemoSettings(
        node_env="development",
        dev_bypass=True,
        log_level=log_level,
        tls_enabled=True,
        certs_dir=workdir / "certs",
        ipc_broker_key=load_or_create_key_file(key_file),
        ipc_key_file=key_file,
        ipc_store_path=workdir / "store.sqlite3",
        ipc_transport="bridge",
        bridge_url=f"https://127.0.0.1:{bridge_port}",
        bridge_host="127.0.0.1",
        bridge_port=bridge_port,
        redis_url=redis_url,
    )


# --------------------------------------------------------------------------- #
# What the Bridge routes
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class Hop:
    """One message the Bridge routed."""

    source: str
    target: str
    event: str
    data: Any
    receivers: int
    request: bool

    def line(self) -> str:
        from exprsn_ipc.bridge.dashboard.feed import preview

        kind = " (request)" if self.request and self.event != BusEvent.REPLY else ""
        return f"{self.source:>16} → {self.target:<17} {self.event}{kind}  {preview(self.data, 100)}"


Predicate = Callable[[Hop], bool]


class HopRecorder:
    """The demo's Bridge route listener: records and prints each hop, and lets steps await them."""

    def __init__(self, printer: Callable[[Hop], None] | None = None, *, keep: int = 10_000) -> None:
        self.hops: list[Hop] = []
        self.printer = printer
        self.keep = keep
        self._waiters: list[tuple[Predicate, asyncio.Future[Hop]]] = []

    def __call__(self, service: str, target: str, raw: bytes, receivers: int) -> None:
        from exprsn_ipc.bridge.dashboard.feed import describe_message

        item = describe_message(service, target, raw, receivers, with_preview=False)
        if item is None:
            return
        hop = Hop(item["source"], item["target"], item["event"], item["data"], receivers, item["request"])
        if len(self.hops) >= self.keep:
            del self.hops[: self.keep // 2]
        self.hops.append(hop)
        if self.printer is not None:
            self.printer(hop)
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(hop):
                future.set_result(hop)

    def mark(self) -> int:
        return len(self.hops)

    async def wait_for(
        self,
        event: str,
        *,
        source: str | None = None,
        target: str | None = None,
        where: Callable[[Any], bool] | None = None,
        since: int = 0,
        timeout: float = STEP_TIMEOUT_S,
    ) -> Hop:
        """The first hop (at index ``since`` or later, or yet to come) matching all conditions."""

        def matches(hop: Hop) -> bool:
            return (
                hop.event == event
                and (source is None or hop.source == source)
                and (target is None or hop.target == target)
                and (where is None or where(hop.data))
            )

        for hop in self.hops[since:]:
            if matches(hop):
                return hop
        future: asyncio.Future[Hop] = asyncio.get_running_loop().create_future()
        entry = (matches, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            where_text = f" {source or '*'} → {target or '*'}"
            raise AssertionError(f"no {event}{where_text} within {timeout:g} s") from None
        finally:
            self._waiters.remove(entry)


# --------------------------------------------------------------------------- #
# The stack
# --------------------------------------------------------------------------- #


def load_services() -> ModuleType:
    """The demo's five example services, shipped in the package (:mod:`exprsn_ipc.examples`)."""
    from exprsn_ipc import examples

    return examples


def check_port_free(port: int, owner: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`DemoError` naming ``port`` and ``owner`` when something listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DemoError(
                f"port {port} ({owner}) is already in use: stop what listens there, "
                f"or shift every demo port with --port-offset N ({exc.strerror or exc})"
            ) from None


@dataclass
class RunningService:
    name: str
    port: int
    app: Any
    manager: HTTPSServerManager

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


@dataclass
class DemoStack:
    """The Bridge and the five services, started in this event loop."""

    workdir: Path = DEFAULT_DIR
    port_offset: int = 0
    printer: Callable[[Hop], None] | None = None
    log_level: str = "WARNING"
    redis_url: str | None = None
    settings: Settings = field(init=False)
    hops: HopRecorder = field(init=False)
    bridge_app: BridgeApp | None = field(init=False, default=None)
    bridge_manager: HTTPSServerManager | None = field(init=False, default=None)
    services: dict[str, RunningService] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.hops = HopRecorder(self.printer)

    @property
    def bridge_port(self) -> int:
        return BRIDGE_PORT + self.port_offset

    @property
    def bridge_url(self) -> str:
        return f"https://localhost:{self.bridge_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "ca-cert.pem"

    def ports(self, services: ModuleType) -> dict[str, int]:
        ports = {BRIDGE_SERVICE: self.bridge_port}
        ports.update({spec.name: spec.port + self.port_offset for spec in services.SERVICES})
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise DemoError(f"--port-offset {self.port_offset} puts {name} on port {port}, outside 1-65535")
        return ports

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    async def start(self) -> None:
        from exprsn_ipc.bridge import create_app
        from exprsn_ipc.certs.authority import generate_certificates
        from exprsn_ipc.web.https import HTTPSServerManager

        services = load_services()
        ports = self.ports(services)
        for name, port in ports.items():
            check_port_free(port, name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.settings = demo_settings(
            self.workdir, bridge_port=self.bridge_port, redis_url=self.redis_url, log_level=self.log_level
        )
        await asyncio.to_thread(generate_certificates, self.settings.certs_dir, only=list(ports))
        try:
            bridge_app = create_app(self.settings)
            bridge_app.bridge.route_listeners.append(self.hops)
            self.bridge_app = bridge_app
            self.bridge_manager = HTTPSServerManager(
                BRIDGE_SERVICE, self.bridge_port, enable_http=False, settings=self.settings
            )
            await self.bridge_manager.start(bridge_app)
            for spec in services.SERVICES:
                module = services.load(spec)
                app = module.create_app(self.settings, db_path=self.workdir / f"{spec.name}.db")
                manager: HTTPSServerManager = module.create_server(app, self.settings, port=ports[spec.name])
                try:
                    await manager.start(app)
                except BaseException:
                    await manager.stop()  # runs the service's shutdown hooks (closes its database)
                    raise
                self.services[spec.name] = RunningService(spec.name, ports[spec.name], app, manager)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the services (newest first), then the Bridge."""
        for running in reversed(list(self.services.values())):
            try:
                await running.manager.stop()
            except Exception:
                log.exception("stopping %s failed", running.name)
        self.services.clear()
        if self.bridge_manager is not None:
            manager, self.bridge_manager = self.bridge_manager, None
            await manager.stop()

    async def __aenter__(self) -> DemoStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, service: str) -> str:
        return self.services[service].url
