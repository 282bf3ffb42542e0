"""``exprsn-ipc check``: the guide's eight checks against a served Bridge."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from exprsn_ipc.bridge import MemoryBackend, create_app
from exprsn_ipc.cli.check import CheckResult, run_checks
from exprsn_ipc.settings import Settings
from exprsn_ipc.testing import make_test_settings

from ..servers import serve

CLI_TIMEOUT = 30.0
CHECK_NAMES = [
    "Bridge Health Check",
    "Socket.IO Connection",
    "IPC Statistics Endpoint",
    "Event Emit",
    "Event Reception",
    "CRUD Create",
    "CRUD Read",
    "JSONLex Execute",
]
#: Variables that would leak the developer's configuration into the CLI under test.
_CONFIG_VARS = re.compile(r"^(IPC_|REDIS_|BRIDGE_|DEV_BYPASS|NODE_ENV|CORS_ORIGIN|TLS_|CERTS_DIR|LOG_LEVEL)")


def cli_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _CONFIG_VARS.match(k)}
    env.update({"NODE_ENV": "test", "COLUMNS": "200", "NO_COLOR": "1"}, **values)
    return env


def key_of(settings: Settings) -> str:
    assert settings.ipc_broker_key is not None
    return settings.ipc_broker_key.get_secret_value()


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """``python -m exprsn_ipc.cli ARGS`` in ``cwd`` (no .env there); returns (code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exprsn_ipc.cli",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[str]:
    async with serve(create_app(settings, backend=MemoryBackend())) as url:
        yield url


async def test_run_checks_all_pass() -> None:
    settings = make_test_settings(ipc_transport="bridge")
    seen: list[CheckResult] = []
    async with served(settings) as url:
        report = await run_checks(settings, url=url, report=seen.append)
    assert [r.name for r in report.results] == CHECK_NAMES
    assert seen == report.results
    assert [r.status for r in report.results] == ["PASS"] * 8, [(r.name, r.detail) for r in report.results]
    assert report.ok
    assert report.summary() == "Total: 8 | Passed: 8 | Failed: 0 | Skipped: 0"
    assert "from exprsn-timeline" in report.results[4].detail


async def test_run_checks_with_a_wrong_key_fails_the_socketio_check() -> None:
    async with served(make_test_settings(ipc_transport="bridge")) as url:
        report = await run_checks(make_test_settings(), url=url)
    status = {r.name: r.status for r in report.results}
    assert status["Bridge Health Check"] == "PASS"
    assert status["Socket.IO Connection"] == "FAIL"
    assert report.results[1].detail == (
        "UNAUTHORIZED: invalid broker token: invalid signature: "
        "the Bridge refused the broker token; compare IPC_BROKER_KEY with the Bridge's"
    )
    assert not report.ok


async def test_run_checks_against_nothing() -> None:
    report = await run_checks(make_test_settings(), url="http://127.0.0.1:9", timeout=2)
    assert report.results[0].status == "FAIL"
    assert not report.ok
    assert len(report.results) == 8


async def test_check_command_passes(tmp_path: Path) -> None:
    settings = make_test_settings(ipc_transport="bridge")
    async with served(settings) as url:
        code, out, err = await run_cli(
            "check", "--url", url, env=cli_env(IPC_BROKER_KEY=key_of(settings)), cwd=tmp_path
        )
    assert code == 0, out + err
    passes = [line for line in out.splitlines() if re.match(r"^✓ .{30} PASS\b", line)]
    assert len(passes) == 8, out
    assert [line[2:32].rstrip() for line in passes] == CHECK_NAMES
    assert "Total: 8 | Passed: 8 | Failed: 0 | Skipped: 0" in out
    assert "All critical tests passed" in out


async def test_check_command_fails_with_a_wrong_key(tmp_path: Path) -> None:
    settings = make_test_settings(ipc_transport="bridge")
    wrong = key_of(make_test_settings())
    async with served(settings) as url:
        code, out, err = await run_cli("check", "--url", url, env=cli_env(IPC_BROKER_KEY=wrong), cwd=tmp_path)
    assert code == 1, out + err
    assert re.search(r"^✓ Bridge Health Check\s+PASS", out, re.M), out
    assert re.search(r"^✗ Socket\.IO Connection\s+FAIL\s+UNAUTHORIZED: invalid broker token", out, re.M), out
    assert "Total: 8 | Passed: 1 |" in out
    assert "Some critical tests failed" in out
