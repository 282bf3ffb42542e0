"""Operator endpoints (issue 14, item 4): the detail of stats, metrics and the dashboard needs an operator
credential in production on a Bridge reachable from other machines; development is unchanged."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import WAIT, served_bridge

pytestmark = pytest.mark.timeout(30)

OPERATOR = "o" * 40
#: A production Bridge configured to listen on every interface (the test server itself binds loopback).
PUBLIC: dict[str, Any] = {"node_env": "production", "bridge_host": "0.0.0.0", "ipc_operator_token": OPERATOR}


async def _get(url: str, path: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        return await http.get(path, headers=headers)


async def test_production_on_every_interface_hides_the_detail_without_an_operator_credential() -> None:
    async with served_bridge(**PUBLIC) as bridge:
        client = await bridge.connect("/ipc/timeline")  # the Bridge keeps serving its clients throughout
        stats = (await _get(bridge.url, "/api/ipc/stats")).json()
        assert stats["success"] is True and stats["data"]["restricted"] is True
        assert stats["data"]["activeConnections"] == 1
        assert "services" not in stats["data"] and "connections" not in stats["data"]
        assert "IPC_OPERATOR_TOKEN" in stats["data"]["message"]

        metrics = await _get(bridge.url, "/metrics")
        assert metrics.status_code == 401 and metrics.json()["error"] == "OPERATOR_REQUIRED"
        for path in ("/dashboard", "/dashboard/api/state"):
            assert (await _get(bridge.url, path)).status_code == 401
        # A service's login token is no operator credential, nor is a wrong secret.
        login = bridge.token("exprsn-timeline", operation="connect")
        assert (await _get(bridge.url, "/metrics", login)).status_code == 401
        assert (await _get(bridge.url, "/metrics", "x" * 40)).status_code == 401

        full = (await _get(bridge.url, "/api/ipc/stats", OPERATOR)).json()["data"]
        assert "restricted" not in full and full["connections"][0]["service"] == "timeline"
        assert full["counters"]["rejected"]["OPERATOR_REQUIRED"] >= 4
        assert "exprsn_bridge_messages_routed" in (await _get(bridge.url, "/metrics", OPERATOR)).text
        assert (await _get(bridge.url, "/dashboard/api/state", OPERATOR)).status_code == 200
        assert client.sio.connected


@pytest.mark.parametrize(
    "overrides",
    [
        {"node_env": "production"},  # BRIDGE_HOST defaults to 127.0.0.1: loopback only
        {**PUBLIC, "ipc_public_stats": True},
        {"node_env": "development", "bridge_host": "0.0.0.0"},
        {"node_env": "test", "bridge_host": "0.0.0.0"},
    ],
    ids=["production-loopback", "public-stats", "development", "test"],
)
async def test_elsewhere_stats_and_metrics_answer_as_before(overrides: dict[str, Any]) -> None:
    async with served_bridge(**overrides) as bridge:
        stats = (await _get(bridge.url, "/api/ipc/stats")).json()["data"]
        assert "services" in stats and "restricted" not in stats
        assert (await _get(bridge.url, "/metrics")).status_code == 200


async def test_the_stats_command_sends_the_operator_token(tmp_path: Any) -> None:
    from ..cli.test_check import cli_env, key_of, run_cli

    async with served_bridge(**PUBLIC) as bridge:
        env = cli_env(IPC_BROKER_KEY=key_of(bridge.settings), NODE_ENV="production", IPC_OPERATOR_TOKEN=OPERATOR)
        code, out, err = await run_cli("stats", "--json", "--url", bridge.url, env=env, cwd=tmp_path)
        assert code == 0, err
        assert '"connections"' in out and "restricted" not in out
