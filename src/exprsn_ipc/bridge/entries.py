"""The registry record a client may describe itself with (connect ``auth.entry``), checked before use.

The record ends up in the service registry that every ``/api/ipc/stats``, ``ipc:services``
and discovery call returns, so each field has a type and a size, and the whole entry is
refused (``INVALID_MESSAGE``) when one does not: a 3 MB hostname or a ``pid`` nested 900
levels deep would otherwise be served to everyone for as long as the client stays.
"""

from __future__ import annotations

import re
from typing import Any, Final

from exprsn_ipc.errors import EnvelopeError
from exprsn_ipc.protocol.envelope import validate_resource_name
from exprsn_ipc.protocol.instances import instance_service

__all__ = ["MAX_HOSTNAME", "MAX_RESOURCES", "clean_entry", "clean_peer"]

#: A DNS name's limit; also used for the peer address (from a trusted proxy's X-Forwarded-For).
MAX_HOSTNAME: Final = 253
#: Resources one connection may claim.
MAX_RESOURCES: Final = 64
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_.:%\[\]-]{1,253}")
#: Largest integer a JavaScript peer reads exactly (pid, registered).
_MAX_INT: Final = 2**53 - 1


def _integer(entry: dict[str, Any], key: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise EnvelopeError(f"auth.entry.{key} must be a non-negative integer")
    return value


_VERSION: Final = re.compile(r"[0-9A-Za-z.+-]{1,40}")


def clean_entry(entry: Any) -> dict[str, Any]:
    """The fields of ``entry`` the Bridge keeps (``pid``, ``hostname``, ``registered``, ``instance``, ``resources``).

    Raises:
        EnvelopeError: ``entry`` is not an object, or a field has the wrong type or size.
    """
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise EnvelopeError("auth.entry must be an object")
    record: dict[str, Any] = {}
    for key in ("pid", "registered"):
        value = _integer(entry, key)
        if value is not None:
            record[key] = value
    hostname = entry.get("hostname")
    if hostname is not None:
        if not isinstance(hostname, str) or not _HOSTNAME.fullmatch(hostname):
            raise EnvelopeError(f"auth.entry.hostname must be a host name of at most {MAX_HOSTNAME} characters")
        record["hostname"] = hostname
    version = entry.get("version")
    if version is not None:
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise EnvelopeError("auth.entry.version must be a version string of at most 40 characters")
        record["version"] = version
    instance = entry.get("instance")
    if instance is not None:
        if instance_service(instance) is None:
            raise EnvelopeError("auth.entry.instance must be an instance id (<service>@<host>.<pid>.<suffix>)")
        record["instance"] = instance
    resources = entry.get("resources")
    if resources is not None:
        if not isinstance(resources, list) or len(resources) > MAX_RESOURCES:
            raise EnvelopeError(f"auth.entry.resources must be a list of at most {MAX_RESOURCES} names")
        record["resources"] = [validate_resource_name(name) for name in resources]
    return record


def clean_peer(peer: str | None) -> str | None:
    """The client's address, or None when it is not one (an oversized X-Forwarded-For, say)."""
    if peer is None or len(peer) > MAX_HOSTNAME or not _HOSTNAME.fullmatch(peer):
        return None
    return peer
