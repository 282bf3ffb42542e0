"""Instances: each running worker is one replica of its service, with an id and a channel of its own.

A service runs as several replicas. Every worker names itself
``<service>@<host>.<pid>.<suffix>`` and also subscribes ``ipc:<instance id>``. A
request, CRUD or JSONLex call is published on the chosen replica's channel (the
envelope's ``target`` stays the service, so the token binding is unchanged, and
``metadata.instance`` tells a Bridge which channel); plain events keep going to
``ipc:<service>``, where every replica gets them, as in the original. ``@`` is not
allowed in a service name, so an instance channel never collides with a service's.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import secrets
import socket
from typing import Any, Final

from exprsn_ipc.protocol.constants import DEFAULT_NAMESPACE, channel_for

__all__ = [
    "INSTANCE_HEARTBEAT_S",
    "INSTANCE_KEY",
    "INSTANCE_TTL_S",
    "REPLY_TO_KEY",
    "instance_service",
    "new_instance_id",
    "package_version",
    "route_channel",
    "valid_instance",
]

#: How often a replica refreshes its instance record (its heartbeat and load).
INSTANCE_HEARTBEAT_S: Final = 5.0
#: A record whose heartbeat is older than this is ignored (its replica is gone).
INSTANCE_TTL_S: Final = 15.0
#: The envelope ``metadata`` key naming the replica a message is for (routing only).
INSTANCE_KEY: Final = "instance"
#: The request ``metadata`` key naming the replica that waits for the reply.
REPLY_TO_KEY: Final = "replyTo"

_INSTANCE_RE: Final = re.compile(r"([a-z0-9][a-z0-9_.-]{0,62})@[a-z0-9][a-z0-9.-]{0,80}")
_HOST_RE: Final = re.compile(r"[^a-z0-9.-]+")


def new_instance_id(service: str, *, pid: int, host: str | None = None) -> str:
    """A fresh id for one replica of ``service``: service, host, pid and a random suffix."""
    name = _HOST_RE.sub("-", (host or socket.gethostname()).lower()).strip(".-")[:48] or "host"
    return f"{service}@{name}.{pid}.{secrets.token_hex(3)}"


def instance_service(instance: object) -> str | None:
    """The service ``instance`` is a replica of, or None if it is not an instance id."""
    if not isinstance(instance, str):
        return None
    found = _INSTANCE_RE.fullmatch(instance)
    return found.group(1) if found else None


def valid_instance(instance: object, service: str) -> bool:
    """True when ``instance`` is an instance id of ``service``."""
    return instance_service(instance) == service


def route_channel(target: str, metadata: dict[str, Any] | None, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The channel a message for ``target`` goes on: its replica's, when ``metadata`` names one of it."""
    instance = metadata.get(INSTANCE_KEY) if metadata else None
    if instance is not None and valid_instance(instance, target):
        return channel_for(instance, namespace)
    return channel_for(target, namespace)


@functools.cache
def package_version() -> str:
    """exprsn-ipc's version, for instance records."""
    try:
        return importlib.metadata.version("exprsn-ipc")
    except importlib.metadata.PackageNotFoundError:  # a source tree without metadata
        return "unknown"
