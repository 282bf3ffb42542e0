"""The access policy at the Bridge (issue 14, item 3): each kind of denial, named and counted, the
connection undisturbed; revocation of another service's tokens refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exprsn_ipc.errors import ForbiddenError
from exprsn_ipc.protocol.tokens import decode_unverified

from .conftest import WAIT, BridgeFixture, served_bridge

pytestmark = pytest.mark.timeout(60)

POLICY = """
default = "deny"
operators = ["exprsn-admin"]

[[rules]]
name = "timeline-posts"
kind = "emit"
sources = ["timeline"]
targets = ["broadcast", "exprsn-herald"]
events = ["post:*"]

[[rules]]
name = "validate-users"
kind = "request"
targets = ["auth"]
events = ["user:validate"]

[[rules]]
name = "read-posts"
kind = "crud"
resources = ["posts"]
operations = ["read", "create"]

[[rules]]
name = "no-jsonlex-for-spark"
effect = "deny"
kind = "jsonlex"
sources = ["spark"]

[[rules]]
name = "jsonlex"
kind = "jsonlex"

[[rules]]
name = "revoking"
kind = "revoke"
"""


@pytest.fixture
async def policed(tmp_path: Path) -> AsyncIterator[BridgeFixture]:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    async with served_bridge(ipc_policy=path) as bridge:
        yield bridge


async def _denied(bridge: BridgeFixture) -> dict[tuple[str, str], float]:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=WAIT) as http:
        text = (await http.get("/metrics")).text
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("exprsn_bridge_policy_denied_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            found[(labels["source"].strip('"'), labels["rule"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return found


async def test_each_kind_of_denial_names_its_rule_and_the_connection_keeps_serving(policed: BridgeFixture) -> None:
    bridge = policed
    timeline = await bridge.connect("/ipc/timeline")
    spark = await bridge.connect("/ipc/spark")

    # emit: an event the rule does not cover, then one it does, on the same connection.
    event, body = await timeline.emit_ipc({"event": "user:leak", "payload": {}, "target": "broadcast"})
    assert event == "ipc:error" and body["code"] == "FORBIDDEN" and "'default'" in body["message"]
    event, body = await timeline.emit_ipc({"event": "post:created", "payload": {"id": 1}, "target": "broadcast"})
    assert event == "ipc:ack"

    # request, from a worker on the lane: user:validate is allowed, anything else at auth is not.
    def serve(worker: Any) -> None:
        worker.on("user:delete", lambda data, meta: "gone")
        worker.on("user:validate", lambda data, meta: {"valid": True})

    await bridge.worker("exprsn-auth", setup=serve)
    worker = await bridge.worker("exprsn-moderator")
    with pytest.raises(ForbiddenError, match="'default'"):
        await worker.request("exprsn-auth", "user:delete", {"id": 1}, timeout=WAIT)
    # emit from a worker: the lane answers FORBIDDEN too.
    with pytest.raises(ForbiddenError, match="moderator may not emit"):
        await worker.emit("post:created", {"id": 2}, target="broadcast")

    # CRUD: read and create posts, never update.
    assert (await timeline.call("ipc:create", {"resource": "posts", "data": {"t": 1}}))["success"] is True
    assert (await timeline.call("ipc:read", {"resource": "posts", "query": {}}))["success"] is True
    refused = await timeline.call("ipc:update", {"resource": "posts", "id": "x", "data": {}})
    assert refused["success"] is False and "'default'" in str(refused)
    refused = await timeline.call("ipc:read", {"resource": "secrets", "query": {}})
    assert refused["success"] is False

    # JSONLex: a deny rule before the allow rule.
    expression = {"__jsonlex": True, "expr": {"$concat": ["a", "b"]}}
    assert (await timeline.call("ipc:jsonlex", {"expression": expression, "context": {}}))["result"] == "ab"
    refused = await spark.call("ipc:jsonlex", {"expression": expression, "context": {}})
    assert refused["success"] is False and "no-jsonlex-for-spark" in str(refused)

    denied = await _denied(bridge)
    assert denied[("exprsn-timeline", "default")] >= 3
    assert denied[("exprsn-moderator", "default")] == 2
    assert denied[("exprsn-spark", "no-jsonlex-for-spark")] == 1
    assert (await bridge.stats())["counters"]["rejected"]["FORBIDDEN"] >= 6
    # Still connected and served.
    assert timeline.sio.connected and spark.sio.connected
    assert await worker.request("exprsn-auth", "user:validate", {"id": 1}, timeout=WAIT) == {"valid": True}
    event, _ = await timeline.emit_ipc({"event": "post:liked", "payload": {}, "target": "exprsn-herald"})
    assert event == "ipc:ack"


async def test_a_service_may_revoke_its_own_tokens_only_and_an_operator_any(policed: BridgeFixture) -> None:
    bridge = policed
    login = bridge.token("exprsn-timeline", operation="connect")
    login_id = str(decode_unverified(login)["id"])
    timeline = await bridge.client("/ipc/timeline").connect({"token": login})
    herald = await bridge.connect("/ipc/herald")

    refused = await herald.call("ipc:revoke", {"id": login_id, "ttl": 60})
    assert refused["success"] is False and refused["error"] == "FORBIDDEN"
    assert "revoke:own-tokens-only" in refused["message"] and "belongs to exprsn-timeline" in refused["message"]
    assert (await _denied(bridge))[("exprsn-herald", "revoke:own-tokens-only")] == 1
    # Presenting someone else's token proves nothing but whose it is.
    refused = await herald.call("ipc:revoke", {"id": login_id, "ttl": 60, "token": login})
    assert refused["success"] is False and refused["error"] == "FORBIDDEN"

    # The owner may; so may an operator, whatever the token.
    own = bridge.token("exprsn-timeline", operation="connect")
    own_id = str(decode_unverified(own)["id"])
    assert (await timeline.call("ipc:revoke", {"id": own_id, "ttl": 60, "token": own}))["success"] is True
    admin = await bridge.connect("/ipc/admin")
    assert (await admin.call("ipc:revoke", {"id": login_id, "ttl": 60}))["success"] is True
    assert herald.sio.connected


async def test_without_a_policy_everything_is_allowed_but_revoking_others_tokens(bridge: BridgeFixture) -> None:
    login = bridge.token("exprsn-timeline", operation="connect")
    await bridge.client("/ipc/timeline").connect({"token": login})
    herald = await bridge.connect("/ipc/herald")
    event, _ = await herald.emit_ipc({"event": "anything:at-all", "payload": {}, "target": "broadcast"})
    assert event == "ipc:ack"
    refused: dict[str, Any] = await herald.call("ipc:revoke", {"id": str(decode_unverified(login)["id"]), "ttl": 60})
    assert refused["error"] == "FORBIDDEN" and "revoke:own-tokens-only" in refused["message"]


async def test_http_emit_and_jsonlex_are_policed_too(policed: BridgeFixture) -> None:
    token = policed.token("exprsn-herald", operation="connect")
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=policed.url, timeout=WAIT, headers=headers) as http:
        emitted = await http.post("/api/ipc/emit", json={"event": "post:created", "payload": {}, "target": "broadcast"})
        assert emitted.status_code == 403 and emitted.json()["error"] == "FORBIDDEN"
        ran = await http.post("/api/jsonlex/execute", json={"expression": 1, "context": {}})
        assert ran.status_code == 200 and ran.json()["result"] == 1  # the jsonlex rule allows every source
    assert (await _denied(policed))[("exprsn-herald", "default")] == 1


async def test_production_without_a_policy_warns_at_start(caplog: pytest.LogCaptureFixture) -> None:
    from exprsn_ipc.bridge import MemoryBackend, create_app
    from exprsn_ipc.testing import make_test_settings

    with caplog.at_level("WARNING", logger="exprsn_ipc.bridge"):
        create_app(make_test_settings(node_env="production"), backend=MemoryBackend())
    assert "no access policy (IPC_POLICY)" in caplog.text
