"""Prometheus ``/metrics`` for the Bridge and for every service.

Each app gets its own :class:`MetricsExporter`: a private ``CollectorRegistry``
holding one :class:`IPCCollector` that reads the live counters of an
:class:`~exprsn_ipc.worker.core.IPCWorker`, plus any further :class:`MetricSource` (the
Bridge adds its own, ``bridge/metrics.py``) at scrape time. Nothing is registered in prometheus-client's
global default registry, and nothing is counted twice: the numbers are the
ones ``worker.stats`` and ``/api/ipc/stats`` already keep.

Wiring:

* the Bridge serves ``/metrics`` itself (``bridge.http``);
* :func:`~exprsn_ipc.web.integration.migrate_app` (and ``exprsn-ipc serve``)
  answers ``/metrics`` for the wrapped app;
* a FastAPI service of your own: ``add_metrics_route(app, ipc)``.

The metric names are listed in ``docs/demo.md`` (section "Metrics").
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.worker.core import HANDLER_BUCKETS, IPCWorker

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "Backlog",
    "IPCCollector",
    "MetricSource",
    "MetricsApp",
    "MetricsExporter",
    "add_metrics_route",
    "counter",
    "gauge",
    "read_backlog",
]

log = get_logger("exprsn_ipc.metrics")

#: Upper bound of the asynchronous reads done before each scrape (Redis, rate limiter).
REFRESH_TIMEOUT_S = 2.0
RATE_LIMIT_CODE = "RATE_LIMIT_EXCEEDED"


@dataclass(frozen=True, slots=True)
class Backlog:
    """The durable backlog of one service: its stream's length and pending entries.

    ``available`` is False when the worker is not on Redis (durable delivery needs
    Redis Streams) or Redis could not be read; the numbers are then 0.
    """

    available: bool = False
    length: int = 0
    pending: int = 0
    dead_letters: int = 0


async def read_backlog(worker: IPCWorker) -> Backlog:
    """The worker's durable backlog, as its transport reports it (not available: zeros)."""
    try:
        backlog = await asyncio.wait_for(worker.transport.backlog(worker.service_name), REFRESH_TIMEOUT_S)
    except Exception as exc:  # Redis down: report "not available", never fail the scrape
        log.debug("cannot read the durable backlog of %s: %s", worker.service_name, exc)
        return Backlog()
    if backlog is None:
        return Backlog()
    return Backlog(available=True, length=backlog.length, pending=backlog.pending, dead_letters=backlog.dead_letters)


class MetricSource(Protocol):
    """Further metrics for an exporter, read at scrape time."""

    async def refresh(self) -> None:
        """Read what needs I/O, before :meth:`collect` (bounded by the caller)."""
        ...

    def collect(self) -> Iterator[Metric]:
        """The metrics, from what is in memory."""
        ...


def counter(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def gauge(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class IPCCollector:
    """A prometheus-client collector over one worker and any further sources.

    Synchronous reads happen in :meth:`collect`; what needs I/O (the durable
    backlog on Redis, a source's own reads) is read by :meth:`refresh`, which
    :class:`MetricsExporter` awaits before each scrape. ``own_rate_denials``: count
    the worker's own rate-limit refusals (off where a source reports them per service).
    """

    def __init__(
        self, worker: IPCWorker, *, sources: tuple[MetricSource, ...] = (), own_rate_denials: bool = True
    ) -> None:
        self.worker = worker
        self.sources = sources
        self.own_rate_denials = own_rate_denials
        self.backlog = Backlog()

    async def refresh(self) -> None:
        self.backlog = await read_backlog(self.worker)
        for source in self.sources:
            await source.refresh()

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the label sets are only known at scrape time.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._message_metrics()
        yield self._handler_histogram()
        yield from self._connection_metrics()
        for source in self.sources:
            yield from source.collect()

    # The worker ---------------------------------------------------------------
    def _message_metrics(self) -> Iterator[Metric]:
        stats = self.worker.stats
        name = self.worker.service_name
        yield counter(
            "exprsn_ipc_messages_sent",
            "IPC messages this service published, by event.",
            ["service", "event"],
            (([name, event], n) for event, n in sorted(stats.sent_by_event.items())),
        )
        yield counter(
            "exprsn_ipc_messages_received",
            "IPC messages this service accepted (addressed to it, verified), by event.",
            ["service", "event"],
            (([name, event], n) for event, n in sorted(stats.received_by_event.items())),
        )
        yield counter(
            "exprsn_ipc_messages_rejected",
            "IPC messages this service refused, by reason (error code).",
            ["service", "reason"],
            (([name, reason], n) for reason, n in sorted(stats.rejected.items())),
        )
        yield counter(
            "exprsn_ipc_policy_denied",
            "IPC messages the access policy denied at this service, by rule.",
            ["service", "rule"],
            (([name, rule], n) for rule, n in sorted(stats.policy_denied.items())),
        )
        yield counter(
            "exprsn_ipc_messages_dropped",
            "Messages seen on a shared channel but addressed to another service.",
            ["service"],
            [([name], stats.dropped)],
        )
        yield counter(
            "exprsn_ipc_handler_errors", "Handler calls that raised.", ["service"], [([name], stats.handler_errors)]
        )
        yield counter(
            "exprsn_ipc_transport_errors",
            "Transport problems (lost connections and the like).",
            ["service"],
            [([name], stats.transport_errors)],
        )
        if self.own_rate_denials:
            yield counter(
                "exprsn_ipc_rate_limit_denials",
                "Rate-limit denials (on the Bridge: per service; elsewhere: seen by this worker).",
                ["service"],
                [([name], stats.rejected.get(RATE_LIMIT_CODE, 0))],
            )

    def _handler_histogram(self) -> Metric:
        stats = self.worker.stats
        name = self.worker.service_name
        histogram = HistogramMetricFamily(
            "exprsn_ipc_handler_duration_seconds",
            "Time spent in this service's IPC handlers, by event.",
            labels=["service", "event"],
        )
        for event, observed in sorted(stats.handler_seconds.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(HANDLER_BUCKETS, observed.counts, strict=False):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            buckets.append(("+Inf", observed.count))
            histogram.add_metric([name, event], buckets, observed.total)
        return histogram

    def _connection_metrics(self) -> Iterator[Metric]:
        worker = self.worker
        name = worker.service_name
        yield gauge(
            "exprsn_ipc_connected",
            "1 while the worker's transport is connected.",
            ["service", "transport"],
            [([name, worker.transport.name], 1.0 if worker.transport.connected else 0.0)],
        )
        backlog = self.backlog
        yield gauge(
            "exprsn_ipc_durable_available",
            "1 when the durable backlog below was read from Redis; 0 when durable delivery "
            "is not available here (not on Redis) and the backlog is reported as 0.",
            ["service"],
            [([name], 1.0 if backlog.available else 0.0)],
        )
        yield gauge(
            "exprsn_ipc_durable_backlog",
            "Entries in the service's durable stream (XLEN).",
            ["service"],
            [([name], backlog.length)],
        )
        yield gauge(
            "exprsn_ipc_durable_pending",
            "Entries delivered but not yet acknowledged (XPENDING of the service's group).",
            ["service"],
            [([name], backlog.pending)],
        )
        yield gauge(
            "exprsn_ipc_durable_dead_letters",
            "Entries in the service's dead-letter stream.",
            ["service"],
            [([name], backlog.dead_letters)],
        )


def _bound(value: float) -> str:
    return repr(float(value))


class MetricsExporter:
    """One app's registry and collector, rendered in the Prometheus text format."""

    def __init__(
        self, worker: IPCWorker, *, sources: tuple[MetricSource, ...] = (), own_rate_denials: bool = True
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = IPCCollector(worker, sources=sources, own_rate_denials=own_rate_denials)
        self.registry.register(self.collector)

    async def render(self) -> bytes:
        await self.collector.refresh()
        body: bytes = generate_latest(self.registry)
        return body

    async def response(self) -> Response:
        return Response(await self.render(), media_type=CONTENT_TYPE_LATEST)


def add_metrics_route(app: FastAPI, ipc: IPCWorker, *, path: str = "/metrics") -> MetricsExporter:
    """Serve ``ipc``'s metrics on ``path`` of a FastAPI app; returns the exporter."""
    exporter = MetricsExporter(ipc)

    async def metrics() -> Response:
        return await exporter.response()

    app.add_api_route(path, metrics, methods=["GET"], tags=["metrics"], summary="Prometheus metrics")
    return exporter


class MetricsApp:
    """Pure ASGI: answers ``GET /metrics`` with a worker's metrics, passes the rest on."""

    def __init__(self, app: ASGIApp, ipc: IPCWorker, *, path: str = "/metrics") -> None:
        self.app = app
        self.path = path
        self.exporter = MetricsExporter(ipc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and scope.get("method") in ("GET", "HEAD"):
            response = await self.exporter.response()
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
