"""Who is connected to the Bridge and how to reach them, and the Bridge's counters."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from exprsn_ipc.errors import IPCError, RateLimitError

__all__ = ["BridgeStats", "Connection", "Identity", "SocketLink"]


class SocketLink(Protocol):
    """Sends to one client on one namespace, whichever Socket.IO server holds it."""

    async def emit(self, event: str, *args: Any) -> None:
        """Send ``event(*args)`` without an acknowledgement."""

    async def call(self, event: str, *args: Any, timeout: float) -> Any:
        """Send ``event(*args)`` and return the client's acknowledgement."""

    async def drained(self) -> None:
        """Return once the client has taken what was sent to it (back-pressure for delivery)."""

    async def close(self, reason: str) -> None:
        """Close the client's whole socket (every namespace it joined), without waiting for it to read."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the authenticated service, or the development bypass.

    ``trust``: ``"credential"`` (its own key), ``"shared-key"`` or ``"bypass"``; ``serial`` and
    ``not_after`` (a timestamp) describe the credential when there is one.
    """

    service: str
    bypass: bool = False
    claims: dict[str, Any] | None = None
    trust: str = "shared-key"
    serial: int | None = None
    not_after: float | None = None


@dataclass
class Connection:
    """One Socket.IO client connected to ``/ipc/<service>``."""

    sid: str
    namespace: str
    service: str
    mode: str  # "socket": events as (data, meta); "envelope": raw envelopes for IPC workers
    peer: str | None
    bypass: bool
    #: How to send to this client: python-socketio's server, or the worker lane.
    link: SocketLink
    connected: int = field(default_factory=lambda: int(time.time() * 1000))
    last_activity: int = field(default_factory=lambda: int(time.time() * 1000))
    queue: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)
    #: Bytes of the messages in ``queue`` (the slow-consumer budget counts bytes, not only messages).
    queued_bytes: int = 0
    #: The socket fell too far behind and is being closed; nothing more is queued for it.
    slow: bool = False
    channels: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    dropped: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    #: Takes durable messages (``ipc:message`` with an ack); see ``docs/durable.md``.
    durable: bool = False
    #: The kinds of refused packets already logged for this client (each logged once).
    warned: set[str] = field(default_factory=set)
    #: The replica behind this socket (``auth.entry.instance``), if it named one; None once it left.
    instance: str | None = None
    #: How the connection proved its service (see :class:`Identity`).
    trust: str = "shared-key"
    #: The serial and end of validity (timestamp) of the credential it connected with.
    serial: int | None = None
    not_after: float | None = None
    #: Identity at the connection: its envelopes go without broker tokens, and it gets
    #: others' that way (``IDENTITY_AT_CONNECTION``, an embedded Bridge's lane only).
    unsigned: bool = False

    @property
    def short(self) -> str:
        return self.service.removeprefix("exprsn-")

    @property
    def key(self) -> str:
        return f"{self.namespace}#{self.sid}"

    def describe(self) -> dict[str, Any]:
        return {
            "id": f"{self.short}:{self.sid}",
            "service": self.short,
            "fullName": self.service,
            "namespace": self.namespace,
            "mode": self.mode,
            "connected": self.connected,
            "lastActivity": self.last_activity,
            "bypass": self.bypass,
            "trust": self.trust,
        }


@dataclass
class BridgeStats:
    """Counters behind ``/api/ipc/stats``."""

    routed: int = 0
    delivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    per_service: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, service: str, what: str, n: int = 1) -> None:
        counts = self.per_service.get(service)
        if counts is None:  # not setdefault: that would build a Counter per message
            counts = self.per_service[service] = Counter()
        counts[what] += n

    def reject(self, service: str | None, code: str, n: int = 1) -> None:
        self.rejected[code] += n
        if service:
            self.count(service, f"rejected:{code}", n)

    def refused(self, service: str | None, exc: IPCError) -> None:
        """Count a request refused with ``exc``; rate-limit refusals were counted by the check itself."""
        if exc.code != RateLimitError.code:
            self.reject(service, exc.code)

    def as_dict(self) -> dict[str, Any]:
        per_service: dict[str, Any] = {}
        for name, counts in self.per_service.items():
            rejected = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")}
            per_service[name] = {
                "sent": counts["sent"],
                "delivered": counts["delivered"],
                "rejected": rejected,
            }
        return {
            "messagesRouted": self.routed,
            "messagesDelivered": self.delivered,
            "rejected": dict(self.rejected),
            "perService": per_service,
        }
