"""Helpers to run the Node.js interop scripts in tests/node."""

from __future__ import annotations

import asyncio
import json
import shutil
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
