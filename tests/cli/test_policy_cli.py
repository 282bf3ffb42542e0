"""``exprsn-ipc policy check`` and ``policy test`` (issue 14, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_check import cli_env, run_cli

pytestmark = pytest.mark.timeout(60)

POLICY = """
default = "deny"
operators = ["admin"]
[[rules]]
name = "posts"
kind = "emit"
sources = ["timeline"]
events = ["post:*"]
[[rules]]
name = "read-posts"
kind = "crud"
resources = ["posts"]
operations = ["read"]
"""


async def test_check_explains_and_test_decides(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    env = cli_env()
    code, out, _ = await run_cli("policy", "check", str(path), env=env, cwd=tmp_path)
    assert code == 0 and "valid policy" in out and "posts: allow emit; from timeline; events post:*" in out
    assert "default: deny anything else" in out and "operators: admin" in out

    code, out, _ = await run_cli(
        "policy", "test", "exprsn-timeline", "broadcast", "post:created", "--policy", str(path), env=env, cwd=tmp_path
    )
    assert code == 0 and out.startswith("allow") and "rule 'posts'" in out
    # IPC_POLICY is the default file; a CRUD update is not a read.
    env_policy = cli_env(IPC_POLICY=str(path))
    code, out, _ = await run_cli(
        "policy", "test", "herald", "timeline", "crud:update", "--resource", "posts", env=env_policy, cwd=tmp_path
    )
    assert code == 1 and out.startswith("deny") and "rule 'default'" in out


async def test_check_refuses_a_bad_file_saying_why(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[rules]]\nname = "x"\nkind = "teleport"\n')
    code, out, err = await run_cli("policy", "check", str(path), env=cli_env(), cwd=tmp_path)
    assert code == 1 and "unknown kind(s) teleport" in out + err
