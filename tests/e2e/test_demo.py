"""``exprsn-ipc demo`` as a user runs it: a separate process, real HTTPS, then ``check`` and ``doctor``.

Ports are shifted with ``--port-offset`` to a free block, so a real deployment on
3001-3014 is never disturbed. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exprsn_ipc.cli.demo import READY_LINE

from .ports import free_port_offset

CLI = [sys.executable, "-m", "exprsn_ipc.cli"]
STEPS = [
    "register and log in",
    "create a post",
    "moderation result reaches the timeline",
    "flagged content is caught",
    "herald stores a notification",
    "direct message over exprsn-spark",
    "log out",
]
#: Hops the journey must have printed (source → target, event).
HOPS = [
    ("exprsn-auth", "broadcast", "user:created"),
    ("exprsn-auth", "broadcast", "user:login"),
    ("exprsn-timeline", "exprsn-auth", "user:validate"),
    ("exprsn-timeline", "broadcast", "post:created"),
    ("exprsn-timeline", "exprsn-moderator", "content:moderate"),
    ("exprsn-timeline", "exprsn-herald", "notification:trigger"),
    ("exprsn-moderator", "exprsn-timeline", "content:moderated"),
    ("exprsn-moderator", "broadcast", "content:flagged"),
    ("exprsn-herald", "exprsn-timeline", "notification:sent"),
    ("exprsn-spark", "exprsn-spark", "message:send"),
    ("exprsn-spark", "exprsn-spark", "message:delivered"),
    ("exprsn-auth", "broadcast", "user:logout"),
]


def demo_env() -> dict[str, str]:
    """The user's environment without anything that would point the demo elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPC_", "REDIS_", "BRIDGE_", "CERTS_"))}
    env.pop("NODE_ENV", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def assert_journey(output: str) -> None:
    for number, name in enumerate(STEPS, start=1):
        assert f"✓ {number}. {name}" in output, f"step {number} ({name}) did not pass:\n{output}"
    assert "✗" not in output
    for source, target, event in HOPS:
        pattern = rf"{re.escape(source)} → {re.escape(target)}\s+{re.escape(event)}\b"
        assert re.search(pattern, output), f"no hop {source} → {target} {event} in the output"
    assert "✓ all 7 steps passed" in output


async def test_demo_once_runs_the_journey_over_https(tmp_path: Path) -> None:
    offset = free_port_offset()
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "demo",
        "--once",
        "--port-offset",
        str(offset),
        "--dir",
        str(tmp_path / "demo"),
        cwd=tmp_path,
        env=demo_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = stdout.decode()
    assert process.returncode == 0, output
    assert_journey(output)
    assert f"https://localhost:{3010 + offset}" in output
    # Its private folder holds everything it made; nothing else was written.
    made = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"certs", "broker.key", "exprsn-auth.db", "exprsn-timeline.db"} <= made
    assert not (tmp_path / ".env").exists()


@dataclass
class Running:
    process: asyncio.subprocess.Process
    workdir: Path
    offset: int
    output: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.output)


@pytest.fixture
async def running_demo(tmp_path: Path) -> AsyncIterator[Running]:
    offset = free_port_offset()
    workdir = tmp_path / "demo"
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "demo",
        "--port-offset",
        str(offset),
        "--dir",
        str(workdir),
        cwd=tmp_path,
        env=demo_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    running = Running(process, workdir, offset)
    ready = asyncio.Event()

    async def read() -> None:  # keep draining: the demo prints every hop while it runs
        assert process.stdout is not None
        async for line in process.stdout:
            running.output.append(line.decode())
            if READY_LINE in running.output[-1]:
                ready.set()

    reader = asyncio.create_task(read())
    try:
        try:
            await asyncio.wait_for(ready.wait(), 60)
        except TimeoutError:
            pytest.fail(f"the demo did not get ready:\n{running.text}")
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)


async def run_cli(*args: str, workdir: Path, cwd: Path) -> tuple[int, str]:
    """Run another exprsn-ipc command that trusts the demo's CA and shares its key."""
    env = demo_env()
    env.update(
        {
            "NODE_ENV": "development",
            "CERTS_DIR": str(workdir / "certs"),
            "IPC_KEY_FILE": str(workdir / "broker.key"),
            "COLUMNS": "200",
        }
    )
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode()


async def test_check_and_doctor_pass_against_the_running_demo(running_demo: Running, tmp_path: Path) -> None:
    assert_journey(running_demo.text)
    bridge = f"https://localhost:{3010 + running_demo.offset}"

    code, output = await run_cli("check", "--url", bridge, workdir=running_demo.workdir, cwd=tmp_path)
    assert code == 0, output
    assert len(re.findall(r"^✓ .+ PASS\b", output, flags=re.MULTILINE)) == 8, output
    assert "Total: 8 | Passed: 8 | Failed: 0 | Skipped: 0" in output

    timeline_port = str(3004 + running_demo.offset)
    code, output = await run_cli(
        "doctor",
        "--service",
        "exprsn-timeline",
        "--port",
        timeline_port,
        "--url",
        bridge,
        workdir=running_demo.workdir,
        cwd=tmp_path,
    )
    assert code == 0, output
    marks = re.findall(r"^([✓✗]) ", output, flags=re.MULTILINE)
    assert marks and set(marks) == {"✓"}, output

    # Ctrl-C stops every server gracefully and exits 0 (the journey passed).
    running_demo.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(running_demo.process.wait(), 30) == 0, running_demo.text
