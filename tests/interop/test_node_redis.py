"""Python workers and a Node worker speaking the original protocol share one Redis.

``tests/node/redis_worker.js`` (ioredis + jsonwebtoken) is driven through
stdin/stdout JSON lines; see the header of that file for the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.errors import TokenError
from exprsn_ipc.protocol.constants import ENVELOPE_KEYS, TOKEN_CLAIMS
from exprsn_ipc.protocol.tokens import decode_unverified
from exprsn_ipc.testing import make_test_settings

from ..conftest import RedisWorkerFactory

pytestmark = [pytest.mark.redis, pytest.mark.node]

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "redis_worker.js"
NODE_NAME = "exprsn-herald"
WAIT = 5.0


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Install tests/node's npm dependencies once (``npm ci``), failing loudly without Node."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are required for the interop tests: `apt-get install nodejs npm`", pytrace=False)
    needed = ("ioredis", "jsonwebtoken")
    if any(not (NODE_DIR / "node_modules" / name / "package.json").exists() for name in needed):
        command = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
        done = subprocess.run(
            ["npm", command, "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            pytest.fail(f"npm {command} in {NODE_DIR} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return NODE_DIR / "node_modules"


class NodeWorker:
    """One ``node redis_worker.js`` process: commands in, results and events out."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stderr: list[str] = []
        self._results: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._readers = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]

    @classmethod
    async def start(cls, *, redis_url: str, key: str, name: str = NODE_NAME) -> NodeWorker:
        env = {**os.environ, "REDIS_URL": redis_url, "IPC_BROKER_KEY": key, "SERVICE_NAME": name, "NODE_ENV": "test"}
        process = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            cwd=NODE_DIR,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        worker = cls(process)
        try:
            ready = await worker.event("ready", timeout=15)
            assert ready["service"] == name
        except BaseException:
            await worker.close()
            raise
        return worker

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                self.stderr.append(f"(stdout) {line.decode(errors='replace')}")
                continue
            if item.get("type") == "result" and item.get("id") in self._results:
                future = self._results.pop(item["id"])
                if not future.done():
                    future.set_result(item)
            else:
                self.events.put_nowait(item)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr.append(line.decode(errors="replace"))

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._results[self._next_id] = future
        self.process.stdin.write(json.dumps({"id": self._next_id, "cmd": cmd, **args}).encode() + b"\n")
        await self.process.stdin.drain()
        result = await asyncio.wait_for(future, WAIT)
        assert "error" not in result, f"node command {cmd} failed: {result['error']} {''.join(self.stderr)}"
        return result

    async def event(
        self,
        kind: str,
        *,
        timeout: float = WAIT,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next event of ``kind`` (matching ``where``); other events are discarded."""

        async def find() -> dict[str, Any]:
            while True:
                item = await self.events.get()
                if item.get("type") == "fatal":
                    raise AssertionError(f"node worker failed: {item} {''.join(self.stderr)}")
                if item.get("type") == kind and (where is None or where(item)):
                    return item

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            stderr = "".join(self.stderr)
            raise AssertionError(f"no {kind!r} event from node within {timeout} s; stderr: {stderr}") from None

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("quit"), 2)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


@pytest.fixture(params=[False, True], ids=["classic", "sharded"])
def redis_settings(redis_url: str, request: pytest.FixtureRequest) -> Settings:
    """Every test with ``IPC_SHARDED_PUBSUB`` off and on: sharding only touches the per-replica
    channels, which the Node worker never uses, so both must interoperate alike."""
    return make_test_settings(redis_url=redis_url, ipc_transport="redis", ipc_sharded_pubsub=request.param)


@pytest.fixture
def settings(redis_settings: Settings) -> Settings:
    return redis_settings


@pytest.fixture
async def node(node_modules: Path, redis_url: str, settings: Settings) -> AsyncIterator[NodeWorker]:
    assert settings.ipc_broker_key is not None
    worker = await NodeWorker.start(redis_url=redis_url, key=settings.ipc_broker_key.get_secret_value())
    try:
        yield worker
    finally:
        await worker.close()


@pytest.fixture
def python(redis_workers: RedisWorkerFactory) -> RedisWorkerFactory:
    return redis_workers


def collect(worker: IPCWorker, event: str) -> asyncio.Queue[tuple[Any, Any]]:
    queue: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
    worker.on(event, lambda data, meta: queue.put_nowait((data, meta)))
    return queue


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_node_to_python_targeted_and_broadcast(node: NodeWorker, python: Any) -> None:
    auth = await python("exprsn-auth")
    validate = collect(auth, "user:validate")
    posts = collect(auth, "post:created")

    sent = await node.call("emit", event="user:validate", data={"userId": 1, "sessionId": "s"}, target="exprsn-auth")
    assert sent["channel"] == "ipc:exprsn-auth" and sent["receivers"] == 1
    data, meta = await asyncio.wait_for(validate.get(), WAIT)
    assert data == {"userId": 1, "sessionId": "s"}
    assert meta.source == NODE_NAME
    # The original's model: only the shared key vouches for a Node worker's source.
    assert meta.trust == "shared-key"
    assert meta.channel == "ipc:exprsn-auth"
    assert meta.token["id"] == sent["tokenId"]
    assert meta.token["source"] == NODE_NAME and meta.token["target"] == "exprsn-auth"
    assert list(json.loads(sent["raw"])) == list(ENVELOPE_KEYS)

    sent = await node.call("emit", event="post:created", data={"id": "p1"}, target="broadcast")
    assert sent["channel"] == "ipc:broadcast"
    data, meta = await asyncio.wait_for(posts.get(), WAIT)
    assert data == {"id": "p1"} and meta.source == NODE_NAME and meta.channel == "ipc:broadcast"
    assert auth.stats.rejected == {}
    # the Node worker's registry entry (written through its 'ipc:data:' prefix) is discovered
    assert NODE_NAME in {s["name"] for s in await auth.get_active_services()}


async def test_python_to_node_targeted_and_broadcast(node: NodeWorker, python: Any) -> None:
    timeline = await python("exprsn-timeline")
    result = await timeline.emit("notification:trigger", {"userId": 5}, target=NODE_NAME)
    assert result.receivers == 1
    got = await node.event("received")
    assert got["channel"] == f"ipc:{NODE_NAME}"
    assert got["raw"].encode() == result.envelope.encode()
    assert got["message"]["data"] == {"userId": 5}
    claims = got["claims"]  # jwt.verify(token, key, {algorithms: ['HS256']}) accepted it
    assert got["claimKeys"] == list(TOKEN_CLAIMS)
    assert claims["source"] == "exprsn-timeline" and claims["target"] == NODE_NAME
    assert claims["type"] == "broker" and claims["version"] == "1.0"
    assert claims["metadata"] == {"event": "notification:trigger"}
    assert "iat" not in claims

    result = await timeline.emit("post:created", {"id": "p2"})
    got = await node.event("received", where=lambda e: e["message"]["event"] == "post:created")
    assert got["channel"] == "ipc:broadcast"
    assert got["claims"]["data"] == {"id": "p2"}


async def test_python_require_ack_gets_the_originals_unsigned_ack(node: NodeWorker, python: Any) -> None:
    """The original acks without a token: our worker rejects and counts it (documented)."""
    timeline = await python("exprsn-timeline")
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    timeline.on("error", errors.put_nowait)
    acks = collect(timeline, "ack")
    await timeline.emit("notification:trigger", {"n": 1}, target=NODE_NAME, require_ack=True)
    sent = await node.event("ack-sent")
    assert sent["to"] == "exprsn-timeline" and sent["receivers"] == 1
    error = await asyncio.wait_for(errors.get(), WAIT)
    assert isinstance(error, TokenError)
    assert timeline.stats.rejected["INVALID_TOKEN"] == 1
    assert acks.empty()


async def test_node_require_ack_gets_a_signed_ack(node: NodeWorker, python: Any) -> None:
    auth = await python("exprsn-auth")
    seen = collect(auth, "user:validate")
    sent = await node.call("emit", event="user:validate", data={"userId": 2}, target="exprsn-auth", requireAck=True)
    await asyncio.wait_for(seen.get(), WAIT)
    ack = await node.event("received", where=lambda e: e["message"]["event"] == "ack")
    assert ack["channel"] == f"ipc:{NODE_NAME}"
    assert ack["message"]["source"] == "exprsn-auth"
    assert ack["message"]["data"] == {"originalEvent": "user:validate", "originalId": json.loads(sent["raw"])["token"]}
    assert ack["claims"]["source"] == "exprsn-auth" and ack["claims"]["operation"] == "ack"


async def test_python_revocation_is_honoured_by_node(node: NodeWorker, python: Any) -> None:
    timeline = await python("exprsn-timeline")
    envelope = timeline.build_envelope("notification:trigger", {"n": 1}, target=NODE_NAME)
    token_id = decode_unverified(envelope.token or "")["id"]
    assert (await node.call("verify", token=envelope.token))["ok"] is True
    assert await timeline.tokens.revoke_token(token_id) is True
    verdict = await node.call("verify", token=envelope.token)
    assert verdict["ok"] is False
    assert verdict["reason"] == "Token verification failed: Token has been revoked"
    await timeline.transport.publish(f"ipc:{NODE_NAME}", envelope.encode())
    rejected = await node.event("rejected")
    assert rejected["error"] == "Message handling failed: Token verification failed: Token has been revoked"
    assert rejected["event"] == "notification:trigger"


async def test_node_revocation_is_honoured_by_python(node: NodeWorker, python: Any) -> None:
    auth = await python("exprsn-auth")
    handled = collect(auth, "user:validate")
    errors: asyncio.Queue[Exception] = asyncio.Queue()
    auth.on("error", errors.put_nowait)
    prepared = await node.call("prepare", event="user:validate", data={"userId": 3}, target="exprsn-auth")
    token_id = prepared["tokenId"]
    assert not auth.tokens.is_revoked(token_id)
    assert (await node.call("revoke", tokenId=token_id))["revoked"] is True  # the original's revokeToken
    await eventually(lambda: auth.tokens.is_revoked(token_id))  # keyspace notification → local cache
    await node.call("publish", channel=prepared["channel"], raw=prepared["raw"])
    error = await asyncio.wait_for(errors.get(), WAIT)
    assert error.code == "TOKEN_REVOKED"  # type: ignore[attr-defined]
    assert auth.stats.rejected["TOKEN_REVOKED"] == 1
    assert handled.empty()
