"""Every event name a peer must agree with, defined once.

Two vocabularies travel on the bus:

* :class:`SioEvent`: the Socket.IO events exchanged between a client (an IPC worker,
  a Node ``socket.io-client``, the dashboard) and the Bridge.
* :class:`BusEvent`: IPC events with a protocol meaning, carried inside envelopes
  (request/reply, acks, CRUD and JSONLex calls).

Both are ``StrEnum``: a member *is* its wire string, so it can be compared with,
hashed as and serialised as the plain name.
"""

from __future__ import annotations

from enum import StrEnum, unique
from typing import Final

__all__ = [
    "CRUD_OPERATIONS",
    "LOCAL_EVENTS",
    "RESERVED_EVENTS",
    "BusEvent",
    "SioEvent",
    "crud_event",
    "crud_operation",
]


@unique
class SioEvent(StrEnum):
    """Socket.IO events between clients and the Bridge (namespace ``/ipc/<service>``)."""

    # The original's events (reference §4): a client's emit, its answer, its errors.
    EMIT = "ipc:emit"
    ACK = "ipc:ack"
    ERROR = "ipc:error"
    CREATE = "ipc:create"
    READ = "ipc:read"
    UPDATE = "ipc:update"
    DELETE = "ipc:delete"
    JSONLEX = "ipc:jsonlex"
    # Ours: requests, discovery and revocation for Socket.IO clients.
    REQUEST = "ipc:request"
    SERVICES = "ipc:services"
    REVOKE = "ipc:revoke"
    REVOKED = "ipc:revoked"
    # The IPC workers' raw-envelope events (bridge transport and worker lane).
    PUBLISH = "ipc:publish"
    SEND = "ipc:send"
    PUBLISH_BATCH = "ipc:publish_batch"
    PUBLISH_DURABLE = "ipc:publish_durable"
    SUBSCRIBE = "ipc:subscribe"
    UNSUBSCRIBE = "ipc:unsubscribe"
    MESSAGE = "ipc:message"
    MESSAGES = "ipc:messages"
    # Replicas: discovery of a service's instances, claims shared by replicas, leaving.
    INSTANCES = "ipc:instances"
    CLAIM = "ipc:claim"
    LEAVE = "ipc:leave"


@unique
class BusEvent(StrEnum):
    """IPC events with a protocol meaning, carried inside envelopes."""

    REPLY = "ipc:reply"
    ACK = "ack"
    CRUD_CREATE = "crud:create"
    CRUD_READ = "crud:read"
    CRUD_UPDATE = "crud:update"
    CRUD_DELETE = "crud:delete"
    JSONLEX_EXECUTE = "jsonlex:execute"


#: The four CRUD operations, in the original's order.
CRUD_OPERATIONS: Final = ("create", "read", "update", "delete")


def crud_event(operation: str) -> BusEvent:
    """``create`` → ``crud:create``; raises ``ValueError`` for anything else."""
    return BusEvent(f"crud:{operation}")


def crud_operation(event: str) -> str | None:
    """``crud:create`` → ``create``; None for any other event."""
    return _CRUD_BY_EVENT.get(event)


_CRUD_BY_EVENT: Final[dict[str, str]] = {crud_event(operation): operation for operation in CRUD_OPERATIONS}

#: Events that are only ever delivered inside the process (DESIGN fix 1).
LOCAL_EVENTS: Final = frozenset(
    {
        "ready",
        "error",
        "sent",
        "received",
        "handler-error",
        "subscribed",
        "unsubscribed",
        "disconnected",
        "reconnected",
    }
)
#: Names Socket.IO reserves; they cannot travel as IPC events.
RESERVED_EVENTS: Final = frozenset(
    {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
        "message",
    }
)
