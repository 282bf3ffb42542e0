"""``/api/ipc/stats``: the Bridge's state in the original's shape, and the counts-only summary."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["snapshot", "summary"]


async def summary(bridge: Bridge) -> dict[str, Any]:
    """Counts only: what a caller without an operator credential sees (``bridge/operator.py``)."""
    services = await bridge.backend.services()
    return {
        "activeServices": len(services),
        "activeConnections": len(bridge.connections),
        "backend": bridge.backend.name,
        "uptime": round(time.time() - bridge.started_at, 3),
    }


async def snapshot(bridge: Bridge) -> dict[str, Any]:
    """The original's shape plus counters, replicas and rate-limit usage."""
    services = await bridge.backend.services()
    instances = await bridge.backend.instances()
    replicas = Counter(str(record.get("service")) for record in instances)
    for entry in services:
        entry["replicas"] = replicas.get(str(entry.get("name")), 0)
    connections = [c.describe() for c in bridge.connections.values()]
    usage = await bridge.limiter.snapshot() if bridge.limiter is not None else {}
    return {
        "activeServices": len(services),
        "services": services,
        "instances": instances,
        "activeConnections": len(connections),
        "connections": connections,
        "rateLimits": {
            "enabled": bridge.limiter is not None,
            "window": bridge.settings.ipc_rate_window,
            "maxRequests": bridge.settings.ipc_rate_max,
            "usage": usage,
        },
        "counters": bridge.stats.as_dict(),
        "backend": bridge.backend.name,
        "uptime": round(time.time() - bridge.started_at, 3),
    }
