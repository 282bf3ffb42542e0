"""A free block of the demo's ports (Bridge 3010 and the services' 3001-3014), shifted by an offset."""

from __future__ import annotations

import random
import socket

#: Every port the demo listens on, before the offset.
DEMO_PORTS = (3001, 3002, 3004, 3006, 3010, 3014)


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_offset(attempts: int = 200) -> int:
    """An offset N such that every demo port + N is free right now (random, to avoid parallel runs)."""
    rng = random.Random()
    for _ in range(attempts):
        offset = rng.randrange(20_000, 40_000)
        if all(_free(port + offset) for port in DEMO_PORTS):
            return offset
    raise RuntimeError("no free block of ports for the demo")
