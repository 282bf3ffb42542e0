"""``exprsn-ipc init``, ``emit`` and ``stats`` run as real subprocesses, and bad configuration."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path
from typing import Any

from exprsn_ipc import IPCWorker
from exprsn_ipc.testing import make_test_settings
from exprsn_ipc.transport.bridge import BridgeTransport
from exprsn_ipc.worker.handlers import MessageMeta

from .test_check import cli_env, key_of, run_cli, served

KEY_LINE = re.compile(r"^IPC_BROKER_KEY=([0-9a-f]{64})$", re.M)
GUIDE_VARIABLES = (
    "TLS_ENABLED",
    "CERTS_DIR",
    "IPC_BROKER_KEY",
    "IPC_TOKEN_TTL",
    "IPC_RATE_LIMIT",
    "IPC_RATE_WINDOW",
    "IPC_RATE_MAX",
    "DEV_BYPASS",
    "IPC_BYPASS_AUTH",
    "NODE_ENV",
)


def env_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text("utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


async def test_init_writes_a_private_env_and_keeps_its_key(tmp_path: Path) -> None:
    env = cli_env()
    code, out, err = await run_cli("init", env=env, cwd=tmp_path)
    assert code == 0, out + err
    dotenv = tmp_path / ".env"
    assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600
    text = dotenv.read_text("utf-8")
    match = KEY_LINE.search(text)
    assert match is not None, text
    key = match.group(1)
    values = env_values(dotenv)
    for name in GUIDE_VARIABLES:
        assert name in values, name
    assert values["NODE_ENV"] == "development"
    assert values["IPC_RATE_MAX"] == "1000"

    # A second run keeps the key ...
    code, out, err = await run_cli("init", env=env, cwd=tmp_path)
    assert code == 0, out + err
    assert "kept" in out
    assert KEY_LINE.findall(dotenv.read_text("utf-8")) == [key]

    # ... --force replaces it, and keeps the rest.
    code, out, err = await run_cli("init", "--force", env=env, cwd=tmp_path)
    assert code == 0, out + err
    keys = KEY_LINE.findall(dotenv.read_text("utf-8"))
    assert len(keys) == 1
    assert keys[0] != key
    assert {k: v for k, v in env_values(dotenv).items() if k != "IPC_BROKER_KEY"} == {
        k: v for k, v in values.items() if k != "IPC_BROKER_KEY"
    }
    assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600


async def test_init_production_and_a_key_the_cli_then_uses(tmp_path: Path) -> None:
    code, out, err = await run_cli("init", "--production", "--path", "prod.env", env=cli_env(), cwd=tmp_path)
    assert code == 0, out + err
    values = env_values(tmp_path / "prod.env")
    assert values["NODE_ENV"] == "production"
    assert values["DEV_BYPASS"] == "false"
    assert re.fullmatch(r"[0-9a-f]{64}", values["IPC_BROKER_KEY"])


async def test_emit_and_stats_against_a_served_bridge(tmp_path: Path) -> None:
    settings = make_test_settings(ipc_transport="bridge")
    env = cli_env(IPC_BROKER_KEY=key_of(settings))
    received: asyncio.Queue[tuple[Any, MessageMeta]] = asyncio.Queue()
    async with served(settings) as url:
        worker = IPCWorker("exprsn-timeline", settings=settings, transport=BridgeTransport(settings, url=url))
        worker.on("post:created", lambda data, meta: received.put_nowait((data, meta)))
        await worker.start()
        try:
            code, out, err = await run_cli(
                "emit",
                "post:created",
                '{"postId": 5}',
                "--target",
                "exprsn-timeline",
                "--as",
                "exprsn-auth",
                "--url",
                url,
                env=env,
                cwd=tmp_path,
            )
            assert code == 0, out + err
            assert "published post:created to exprsn-timeline as exprsn-auth: 1 receivers" in out
            data, meta = await asyncio.wait_for(received.get(), 5)
            assert data == {"postId": 5}
            assert meta.source == "exprsn-auth"

            code, out, err = await run_cli("stats", "--json", "--url", url, env=env, cwd=tmp_path)
            assert code == 0, out + err
            body = json.loads(out)
            assert body["success"] is True
            assert body["data"]["counters"]["perService"]["exprsn-auth"]["sent"] == 1
            assert "exprsn-timeline" in {s["name"] for s in body["data"]["services"]}

            code, out, err = await run_cli("stats", "--url", url, env=env, cwd=tmp_path)
            assert code == 0, out + err
            assert "active services:" in out
            assert "exprsn-timeline" in out

            # A payload that is not JSON, and a key the Bridge does not share.
            code, out, err = await run_cli("emit", "post:created", "{nope", "--url", url, env=env, cwd=tmp_path)
            assert code == 2
            assert "not JSON" in err
            wrong = cli_env(IPC_BROKER_KEY=key_of(make_test_settings()))
            code, out, err = await run_cli("emit", "post:created", "{}", "--url", url, env=wrong, cwd=tmp_path)
            assert code == 1
            assert "UNAUTHORIZED" in err
        finally:
            await worker.disconnect()
    assert received.empty()


async def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    key = key_of(make_test_settings())
    code, out, err = await run_cli(
        "stats", "--url", "http://127.0.0.1:9", env=cli_env(IPC_BROKER_KEY=key, IPC_RATE_MAX="abc"), cwd=tmp_path
    )
    assert code == 2, out + err
    assert "IPC_RATE_MAX" in err
    assert "Traceback" not in err

    # The same value from a .env file in the working directory.
    (tmp_path / ".env").write_text(f"IPC_BROKER_KEY={key}\nIPC_RATE_WINDOW=-5\n", "utf-8")
    code, out, err = await run_cli("emit", "a:b", "--url", "http://127.0.0.1:9", env=cli_env(), cwd=tmp_path)
    assert code == 2, out + err
    assert "IPC_RATE_WINDOW" in err

    # A command that signs, with no key outside development, says where the key comes from.
    (tmp_path / ".env").unlink()
    code, out, err = await run_cli(
        "emit", "a:b", "--url", "http://127.0.0.1:9", env=cli_env(NODE_ENV="production"), cwd=tmp_path
    )
    assert code == 2, out + err
    assert "no broker key: set IPC_BROKER_KEY to the Bridge's key" in err
