"""Small network helpers shared by the Bridge and the web middleware."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_loopback", "is_same_origin"]


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ``::1`` and IPv4-mapped loopback (``::ffff:127.x.y.z``).

    Anything that is not a literal IP address (``None``, ``"localhost"``, a
    scoped IPv6 address) is *not* loopback: the check fails closed.
    """
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_same_origin(origin: str | None, host: str | None) -> bool:
    """True when a request comes from no web page (no ``Origin``) or from a page of this very server.

    Browsers attach ``Origin`` to cross-site requests and to every websocket; workers,
    Node services and curl send none. ``Origin: null`` (sandboxed frames, files) and
    anything that does not name ``host`` (the request's ``Host`` header) count as
    cross-site: the check fails closed.
    """
    if origin is None:
        return True
    if not host or origin == "null":
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.lower()
