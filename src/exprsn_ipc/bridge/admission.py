"""Admission to the Bridge: a client joining ``/ipc/<service>`` is authenticated and becomes a connection.

Both Socket.IO servers (python-socketio in ``sio_server.py`` and the worker lane in
``lane.py``) admit and release their clients here, so the rules are the same.
"""

from __future__ import annotations

from typing import Any

from exprsn_ipc.bridge.connection import Connection, SocketLink
from exprsn_ipc.bridge.core import Bridge
from exprsn_ipc.bridge.entries import clean_entry, clean_peer
from exprsn_ipc.errors import AuthError, CredentialError, EnvelopeError, ForbiddenError, IPCError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.constants import ENVELOPE_PROTOCOL, full_service_name
from exprsn_ipc.protocol.envelope import validate_service_name
from exprsn_ipc.protocol.instances import instance_service

__all__ = ["admit", "normalise_namespace", "release"]

log = get_logger("exprsn_ipc.bridge")


async def admit(
    bridge: Bridge,
    namespace: str,
    sid: str,
    *,
    peer: str | None,
    token: str | None,
    auth: Any,
    link: SocketLink,
    same_origin: bool = True,
) -> Connection:
    """Authenticate a client joining ``namespace`` and add its connection to the Bridge.

    Raises:
        AuthError: refused; ``str(exc)`` is the ``connect_error`` message and
            ``exc.code`` its reason (``INVALID_NAMESPACE``, ``UNAUTHORIZED``, ``TOKEN_EXPIRED``…).
    """
    service = normalise_namespace(namespace, bridge.settings.allowed_services)
    if service is None:
        bridge.stats.reject(None, "INVALID_NAMESPACE")
        log.warning("refused a connection to unknown namespace %s", namespace)
        raise AuthError(
            f"INVALID_NAMESPACE: {namespace} is not an IPC namespace (use /ipc/<service>)", code="INVALID_NAMESPACE"
        )
    try:
        identity = bridge.authenticate(token, peer, service=service, same_origin=same_origin)
    except AuthError as exc:
        bridge.stats.reject(service, exc.code)
        log.warning("refused a connection to %s from %s: %s", namespace, peer, exc)
        # A refused credential names its own code; the rest keep the original's "UNAUTHORIZED".
        prefix = exc.code if isinstance(exc, CredentialError) else "UNAUTHORIZED"
        raise AuthError(f"{prefix}: {exc}", code=exc.code) from None
    options = auth if isinstance(auth, dict) else {}
    mode = "envelope" if options.get("protocol") == ENVELOPE_PROTOCOL else "socket"
    try:
        entry = clean_entry(options.get("entry"))
    except EnvelopeError as exc:
        bridge.stats.reject(service, exc.code)
        log.warning("refused a connection to %s from %s: %s", namespace, peer, exc)
        raise AuthError(f"{exc.code}: {exc}", code=exc.code) from None
    if entry.get("instance") is not None and instance_service(entry["instance"]) != service:
        bridge.stats.reject(service, ForbiddenError.code)
        raise ForbiddenError(f"FORBIDDEN: {entry['instance']} is not an instance of {service}")
    if entry.get("resources"):
        await _check_claims(bridge, service, entry["resources"])
    conn = Connection(
        sid=sid,
        namespace=namespace,
        service=service,
        mode=mode,
        peer=clean_peer(peer),
        bypass=identity.bypass,
        link=link,
        durable=mode == "envelope" and options.get("durable") is True,
        trust=identity.trust,
        serial=identity.serial,
        not_after=identity.not_after,
    )
    await bridge.add_connection(conn, entry)
    log.info("%s connected to %s (%s, %s)", service, namespace, mode, identity.trust)
    return conn


async def _check_claims(bridge: Bridge, service: str, resources: list[str]) -> None:
    """A resource is served by one service only: a second service claiming it is refused,
    since CRUD requests for it (with their data) would be routed to the claimant."""
    for other in await bridge.backend.services():
        name, served = other.get("name"), other.get("resources")
        if name == service or not isinstance(served, list):
            continue
        taken = sorted(set(resources).intersection(r for r in served if isinstance(r, str)))
        if taken:
            bridge.stats.reject(service, ForbiddenError.code)
            log.warning("refused %s: it claims %s, already served by %s", service, ", ".join(taken), name)
            raise ForbiddenError(f"FORBIDDEN: resource {taken[0]!r} is already served by {name}")


async def release(bridge: Bridge, conn: Connection) -> None:
    """Remove a client's connection from the Bridge."""
    if conn.key in bridge.connections:
        await bridge.drop_connection(conn)
        log.info("%s disconnected from %s", conn.service, conn.namespace)


def normalise_namespace(namespace: str, allowed: frozenset[str] | None) -> str | None:
    """``/ipc/timeline`` or ``/ipc/exprsn-timeline`` → ``exprsn-timeline``; None if not an IPC namespace."""
    prefix = "/ipc/"
    if not namespace.startswith(prefix):
        return None
    name = namespace[len(prefix) :]
    try:
        validate_service_name(name)
    except IPCError:
        return None
    service = full_service_name(name)
    if allowed is not None and service not in allowed and name not in allowed:
        return None
    return service
