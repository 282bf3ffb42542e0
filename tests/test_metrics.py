"""``/metrics``: scraped and parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exprsn_ipc import IPCWorker
from exprsn_ipc.bridge import create_app
from exprsn_ipc.metrics import MetricsExporter
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings, wait_for_messages
from exprsn_ipc.transport import MemoryBus, MemoryTransport
from exprsn_ipc.web.integration import migrate_app
from exprsn_ipc.worker.core import HANDLER_BUCKETS

from .servers import serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """(sample name, labels) → value, for every sample of every family."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Samples, sample: str, **labels: str) -> float:
    return float(metrics[(sample, frozenset(labels.items()))])


async def test_worker_counters_and_handler_histogram() -> None:
    bus = MemoryBus()
    settings = make_test_settings()
    a = await IPCWorker("exprsn-a", settings=settings, transport=MemoryTransport(bus)).start()
    b = await IPCWorker("exprsn-b", settings=settings, transport=MemoryTransport(bus)).start()
    try:
        release = asyncio.Event()

        @b.on("job:run")
        async def run(data: Any, meta: Any) -> None:
            if data.get("slow"):
                await asyncio.wait_for(release.wait(), 5)

        @b.on("job:fail")
        def fail(data: Any, meta: Any) -> None:
            raise ValueError("boom")

        await a.emit("job:run", {"slow": False}, target="exprsn-b")
        await a.emit("job:run", {"slow": False}, target="exprsn-b")
        await a.emit("job:fail", {}, target="exprsn-b")
        await wait_for_messages(a, b)
        # A message signed with another key is rejected and counted by reason.
        forged = make_test_settings()
        rogue = IPCWorker("exprsn-a", settings=forged, transport=MemoryTransport(bus))
        await rogue.start()
        await rogue.emit("job:run", {}, target="exprsn-b")
        await rogue.disconnect()
        await wait_for_messages(b)

        metrics = parse((await MetricsExporter(b).render()).decode())
        assert value(metrics, "exprsn_ipc_messages_received_total", service="exprsn-b", event="job:run") == 2
        assert value(metrics, "exprsn_ipc_messages_rejected_total", service="exprsn-b", reason="INVALID_TOKEN") == 1
        assert value(metrics, "exprsn_ipc_handler_errors_total", service="exprsn-b") == 1
        count = value(metrics, "exprsn_ipc_handler_duration_seconds_count", service="exprsn-b", event="job:run")
        assert count == 2
        buckets = [
            value(
                metrics,
                "exprsn_ipc_handler_duration_seconds_bucket",
                service="exprsn-b",
                event="job:run",
                le=le,
            )
            for le in [repr(float(b)) for b in HANDLER_BUCKETS] + ["+Inf"]
        ]
        assert buckets == sorted(buckets) and buckets[-1] == 2  # cumulative
        assert value(metrics, "exprsn_ipc_durable_available", service="exprsn-b") == 0  # memory: no durable
        assert value(metrics, "exprsn_ipc_durable_backlog", service="exprsn-b") == 0
        assert value(metrics, "exprsn_ipc_connected", service="exprsn-b", transport="memory") == 1

        sent = parse((await MetricsExporter(a).render()).decode())
        assert value(sent, "exprsn_ipc_messages_sent_total", service="exprsn-a", event="job:run") == 2
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_each_exporter_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    settings = make_test_settings()
    worker = IPCWorker("exprsn-a", settings=settings, transport=MemoryTransport(MemoryBus()))
    first, second = MetricsExporter(worker), MetricsExporter(worker)
    assert first.registry is not second.registry
    assert b"exprsn_ipc" in await first.render()
    assert b"exprsn_ipc" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


async def test_bridge_metrics_count_routing_rejections_denials_and_connections() -> None:
    settings = make_test_settings(ipc_rate_max=2)
    app = create_app(settings)
    token = BrokerTokenManager(service_name="exprsn-timeline", settings=settings).generate_token()
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=5) as http:
        for _ in range(3):  # the third is over the limit
            await http.post("/api/ipc/emit", json={"event": "a:b", "payload": {}}, headers={"x-broker-token": token})
        bad = await http.post("/api/ipc/emit", json={"event": "a:b"}, headers={"x-broker-token": "forged.jwt.x"})
        assert bad.status_code == 401
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    metrics = parse(response.text)
    assert value(metrics, "exprsn_bridge_messages_routed_total") == 2
    assert value(metrics, "exprsn_ipc_rate_limit_denials_total", service="exprsn-timeline") == 1
    assert value(metrics, "exprsn_bridge_messages_rejected_total", reason="UNAUTHORIZED") == 1
    assert value(metrics, "exprsn_bridge_rate_limit_usage", service="exprsn-timeline") == 3
    assert value(metrics, "exprsn_bridge_rate_limit_max") == 2
    assert value(metrics, "exprsn_bridge_service_messages_total", service="exprsn-timeline", direction="sent") == 2
    # The Bridge's own worker got the two broadcasts.
    assert value(metrics, "exprsn_ipc_messages_received_total", service="exprsn-bridge", event="a:b") == 2
    assert any(name == "exprsn_bridge_rate_limit_enabled" for name, _ in metrics)


async def test_migrate_app_serves_metrics_for_any_asgi_app() -> None:
    settings = make_test_settings()
    ipc = IPCWorker("exprsn-legacy", settings=settings, transport=MemoryTransport(MemoryBus()))
    inner = Starlette(routes=[Route("/", lambda request: PlainTextResponse("hi"))])
    async with serve(migrate_app(inner, ipc, settings=settings)) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/")).text == "hi"
        response = await http.get("/metrics")
    metrics = parse(response.text)
    assert value(metrics, "exprsn_ipc_connected", service="exprsn-legacy", transport="memory") == 1


async def test_an_apps_own_metrics_route_wins() -> None:
    settings = make_test_settings()
    ipc = IPCWorker("exprsn-legacy", settings=settings, transport=MemoryTransport(MemoryBus()))
    inner = Starlette(routes=[Route("/metrics", lambda request: PlainTextResponse("mine"))])
    async with serve(migrate_app(inner, ipc, settings=settings)) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/metrics")).text == "mine"


@pytest.mark.redis
async def test_durable_backlog_on_redis(redis_url: str) -> None:
    from exprsn_ipc.transport.redis.durable import DurableOptions
    from exprsn_ipc.transport.redis.transport import RedisTransport

    settings = make_test_settings(redis_url=redis_url, ipc_transport="redis")
    # The receiving service does not consume its stream, so what is sent to it waits there.
    idle = IPCWorker(
        "exprsn-idle", settings=settings, transport=RedisTransport(settings, durable=DurableOptions(enabled=False))
    )
    sender = IPCWorker("exprsn-sender", settings=settings, transport=RedisTransport(settings))
    await idle.start()
    await sender.start()
    try:
        await sender.emit("job:queued", {"n": 1}, target="exprsn-idle", durable=True)
        await sender.emit("job:queued", {"n": 2}, target="exprsn-idle", durable=True)
        metrics = parse((await MetricsExporter(idle).render()).decode())
    finally:
        await sender.disconnect()
        await idle.disconnect()
    assert value(metrics, "exprsn_ipc_durable_available", service="exprsn-idle") == 1
    assert value(metrics, "exprsn_ipc_durable_backlog", service="exprsn-idle") == 2
    assert value(metrics, "exprsn_ipc_durable_pending", service="exprsn-idle") == 0
