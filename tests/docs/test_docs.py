"""The documentation runs: every bash and Python block of README.md and docs/*.md.

Each document is followed from top to bottom in one terminal session (see
:mod:`tests.docs.session`), in an empty temporary folder, as a reader would. A
block is skipped only when it is marked ``<!-- doc: illustrative -->``.
The README is followed by a newcomer: from a copy of the checkout, into a fresh
virtual environment (see ``test_readme_newcomer_walk``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..cli.test_check import cli_env
from ..e2e.test_wheel import assert_demo_runs_from
from .blocks import Block, read_blocks
from .session import Session

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
RUNBLOCK = Path(__file__).with_name("runblock.py")
EXAMPLE = ROOT / "src" / "exprsn_ipc" / "examples" / "migration.py"
#: The ports the README uses literally: the Bridge, and exprsn-timeline with its redirect.
README_PORTS = (3010, 3004, 3003)


def follow(blocks: list[Block], session: Session) -> None:
    try:
        for block in blocks:
            if block.kind != "skip":
                session.run_block(block)
    finally:
        problems = session.close()
        # What the reader would have seen, for whoever debugs a failure.
        (session.cwd.parent / "transcript.txt").write_text("\n".join(session.transcript), "utf-8")
    assert problems == [], "\n".join(problems)


def session_env(home: Path, **extra: str) -> dict[str, str]:
    env = cli_env(HOME=str(home), **extra)
    env.pop("NODE_ENV")  # a reader's shell has none; the docs say when to set it
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.mark.timeout(300)
@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_document_runs(doc: Path, tmp_path: Path, redis_url: str) -> None:
    blocks = read_blocks(doc)
    work = tmp_path / "work"
    work.mkdir()
    env = session_env(tmp_path, REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    follow(blocks, Session(work, env, RUNBLOCK))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(600)
def test_readme_newcomer_walk(tmp_path: Path, wheelhouse: Path) -> None:
    """The README, top to bottom: install into a fresh venv, the demo, then the migration;
    then ``demo --once`` from the venv the README installed the wheel into."""
    busy = [port for port in README_PORTS if not _port_free(port)]
    assert busy == [], f"the README uses ports {README_PORTS}; something already listens on {busy}"
    checkout = tmp_path / "exprsn-ipc"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file() and not name.startswith("tests/node/node_modules/"):
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    home = tmp_path / "home"
    home.mkdir()
    env = session_env(home, PATH=_path_without_venvs())
    env.pop("PYTHONPATH", None)
    # pip installs what the README names from the session's wheelhouse, not from the index
    # again for each command (tests/docs/wheelhouse.py).
    env["PIP_NO_INDEX"] = "1"
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(wheelhouse), env.get("PIP_FIND_LINKS")]))
    follow(read_blocks(ROOT / "README.md"), Session(checkout, env, RUNBLOCK))
    # The README's "Installing into your service's environment" put the wheel into this fresh
    # venv: the demo runs from it, reading nothing from the checkout (tests/e2e/test_wheel.py).
    wheel_venv = home / "exprsn-timeline" / ".venv"
    assert (wheel_venv / "bin" / "exprsn-ipc").exists(), "the README no longer installs the wheel into a venv"
    assert_demo_runs_from(wheel_venv, tmp_path / "elsewhere", checkouts=(checkout, ROOT), HOME=str(home))


def _path_without_venvs() -> str:
    """This machine's PATH, minus any activated virtual environment (a newcomer has none yet)."""
    venv = os.environ.get("VIRTUAL_ENV")
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if not venv or not p.startswith(venv)]
    return os.pathsep.join([str(Path(sys.executable).parent), *parts])


def test_the_readme_shows_the_shipped_example_verbatim() -> None:
    apps = [b for b in read_blocks(ROOT / "README.md") if b.kind == "file" and b.file_name == "app.py"]
    assert len(apps) == 1
    assert apps[0].code == EXAMPLE.read_text("utf-8")


def test_every_skipped_block_is_marked() -> None:
    """A bash or Python block is run unless it says otherwise: nothing is skipped silently."""
    unmarked = [
        b.where
        for doc in [ROOT / "README.md", *DOCS]
        for b in read_blocks(doc)
        if b.language in ("", "text") and b.directive != "illustrative"
    ]
    assert unmarked == [], f"blocks without a language must be marked illustrative: {unmarked}"
