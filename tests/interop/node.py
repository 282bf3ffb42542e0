"""Helpers to run the Node.js interop scripts in tests/node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the test command installs it (see scripts/test.sh)")
    if not (NODE_DIR / "node_modules").is_dir():
        raise RuntimeError("tests/node/node_modules is missing: run `npm ci --prefix tests/node`")
    return node


async def run_once(script: str, payload: dict[str, Any], *, timeout: float = 20.0) -> dict[str, Any]:
    """Run ``node tests/node/<script>`` with ``payload`` as JSON on stdin; parse its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        str(NODE_DIR / script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise AssertionError(f"node {script} failed ({proc.returncode}): {err.decode()}")
    answer: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return answer


class NodeScript:
    """A running script that prints one JSON object per line (``{"step": …}``), read with bounded waits."""

    def __init__(self, process: asyncio.subprocess.Process, wait: float) -> None:
        self.process = process
        self.wait = wait
        self.lines: list[dict[str, Any]] = []

    async def next(self, timeout: float | None = None) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout or self.wait)
        if not raw:
            raise AssertionError(f"node exited early ({await self.stderr()}); lines so far: {self.lines}")
        line: dict[str, Any] = json.loads(raw)
        self.lines.append(line)
        if line.get("step") == "error":
            raise AssertionError(f"node failed: {line} ({await self.stderr()})")
        return line

    async def until(self, step: str, timeout: float | None = None) -> dict[str, Any]:
        while True:
            line = await self.next(timeout)
            if line.get("step") == step:
                return line

    async def step(self, name: str) -> dict[str, Any]:
        """The next line, which must be step ``name``."""
        line = await self.next()
        assert line.get("step") == name, line
        return line

    def steps(self, step: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("step") == step]

    async def stderr(self) -> str:
        if self.process.stderr is None or self.process.returncode is None:
            return ""
        return (await self.process.stderr.read()).decode(errors="replace")


@contextlib.asynccontextmanager
async def node_script(script: str, *args: str, env: dict[str, str], wait: float = 10.0) -> AsyncIterator[NodeScript]:
    """Run ``node tests/node/<script> <args>`` with ``env`` added; killed on exit if still running."""
    process = await asyncio.create_subprocess_exec(
        node_binary(),
        str(NODE_DIR / script),
        *args,
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeScript(process, wait)
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), wait)
