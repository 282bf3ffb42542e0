"""The Bridge's own Prometheus metrics: routing, refusals, rate limits and connections.

A :class:`~exprsn_ipc.metrics.MetricSource` added to the exporter of the Bridge's
worker (``bridge/http.py``), read at scrape time from ``Bridge.stats``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client.core import Metric

from exprsn_ipc.bridge.core import Bridge
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.metrics import RATE_LIMIT_CODE, REFRESH_TIMEOUT_S, counter, gauge

__all__ = ["BridgeMetrics"]

log = get_logger("exprsn_ipc.metrics")


class BridgeMetrics:
    """The Bridge's counters as Prometheus metrics (a ``MetricSource``)."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.rate_usage: dict[str, int] = {}

    async def refresh(self) -> None:
        limiter = self.bridge.limiter
        if limiter is None:
            self.rate_usage = {}
            return
        try:
            self.rate_usage = dict(await asyncio.wait_for(limiter.snapshot(), REFRESH_TIMEOUT_S))
        except Exception as exc:
            log.debug("cannot read the rate limiter: %s", exc)
            self.rate_usage = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._routing_metrics()
        yield from self._rate_limit_metrics()
        yield from self._connection_metrics()

    def _routing_metrics(self) -> Iterator[Metric]:
        stats = self.bridge.stats
        yield counter(
            "exprsn_bridge_messages_routed", "Messages the Bridge published for its clients.", [], [([], stats.routed)]
        )
        yield counter(
            "exprsn_bridge_messages_delivered",
            "Messages the Bridge delivered to Socket.IO clients.",
            [],
            [([], stats.delivered)],
        )
        yield counter(
            "exprsn_bridge_messages_rejected",
            "Requests and messages the Bridge refused, by reason.",
            ["reason"],
            (([reason], n) for reason, n in sorted(stats.rejected.items())),
        )
        per_service = sorted(stats.per_service.items())
        yield counter(
            "exprsn_bridge_service_messages",
            "Messages per service: sent through the Bridge, or delivered to it.",
            ["service", "direction"],
            (
                ([service, direction], counts[direction])
                for service, counts in per_service
                for direction in ("sent", "delivered")
            ),
        )
        yield counter(
            "exprsn_bridge_service_rejected",
            "Refusals per service and reason.",
            ["service", "reason"],
            (
                ([service, key.split(":", 1)[1]], n)
                for service, counts in per_service
                for key, n in sorted(counts.items())
                if key.startswith("rejected:")
            ),
        )

    def _rate_limit_metrics(self) -> Iterator[Metric]:
        bridge = self.bridge
        per_service = sorted(bridge.stats.per_service.items())
        yield counter(
            "exprsn_ipc_rate_limit_denials",
            "Rate-limit denials (on the Bridge: per service; elsewhere: seen by this worker).",
            ["service"],
            (([service], counts[f"rejected:{RATE_LIMIT_CODE}"]) for service, counts in per_service),
        )
        yield gauge(
            "exprsn_bridge_rate_limit_enabled",
            "1 when the Bridge limits the rate of each service.",
            [],
            [([], 1.0 if bridge.limiter is not None else 0.0)],
        )
        yield gauge(
            "exprsn_bridge_rate_limit_max",
            "Requests a service may make per window (IPC_RATE_MAX).",
            [],
            [([], bridge.settings.ipc_rate_max)],
        )
        yield gauge(
            "exprsn_bridge_rate_limit_usage",
            "Requests counted in the current window, per service.",
            ["service"],
            (([service], n) for service, n in sorted(self.rate_usage.items())),
        )

    def _connection_metrics(self) -> Iterator[Metric]:
        connections: dict[tuple[str, str], int] = {}
        for conn in list(self.bridge.connections.values()):
            key = (conn.service, conn.mode)
            connections[key] = connections.get(key, 0) + 1
        yield gauge(
            "exprsn_bridge_connections",
            "Socket.IO connections on /ipc/<service>, by service and mode (envelope = IPC worker).",
            ["service", "mode"],
            (([service, mode], n) for (service, mode), n in sorted(connections.items())),
        )
