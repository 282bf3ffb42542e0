"""Example Exprsn services migrated to exprsn-ipc by the guide's eight steps.

Each ``src/exprsn_ipc/examples/exprsn_<name>/app.py`` exposes ``create_app(settings, *, db_path)``
(steps 1–4, 6, 7) and ``create_server(app, settings, port=...)`` (steps 5 and 8);
``docs/migration-mapping.md`` says where each step is. Run one with
``python -m exprsn_ipc.examples <name>`` , or all of them with
``exprsn-ipc demo``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["SERVICES", "ServiceSpec", "load", "spec_for"]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One example service: its IPC name, its known port and its module."""

    name: str
    port: int
    module: str

    @property
    def short(self) -> str:
        return self.name.removeprefix("exprsn-")


#: The five services, in the order they start (auth first: the others validate sessions with it).
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("exprsn-auth", 3001, "exprsn_ipc.examples.exprsn_auth.app"),
    ServiceSpec("exprsn-moderator", 3006, "exprsn_ipc.examples.exprsn_moderator.app"),
    ServiceSpec("exprsn-herald", 3014, "exprsn_ipc.examples.exprsn_herald.app"),
    ServiceSpec("exprsn-timeline", 3004, "exprsn_ipc.examples.exprsn_timeline.app"),
    ServiceSpec("exprsn-spark", 3002, "exprsn_ipc.examples.exprsn_spark.app"),
)


def spec_for(name: str) -> ServiceSpec:
    """``timeline``, ``exprsn-timeline`` or ``exprsn_timeline`` → its spec; KeyError if unknown."""
    wanted = name.replace("_", "-")
    wanted = wanted if wanted.startswith("exprsn-") else f"exprsn-{wanted}"
    for spec in SERVICES:
        if spec.name == wanted:
            return spec
    raise KeyError(f"unknown service {name!r}; choose from {', '.join(s.short for s in SERVICES)}")


def load(spec: ServiceSpec) -> ModuleType:
    """Import the service's ``app`` module."""
    return importlib.import_module(spec.module)
