"""Each long-running command, on a real terminal: Ctrl-C or SIGTERM ends it cleanly.

"Cleanly" means what a person at the terminal expects: exit status 0 (a stop they
asked for), and no traceback.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exprsn_ipc.certs.authority import generate_certificates

from ..e2e.ports import free_port_offset
from .ptyrun import PtyProcess
from .test_check import cli_env

pytestmark = pytest.mark.timeout(120)

KEY = "k" * 64
APP = """\
from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pty")
    generate_certificates(folder / "certs", only=["exprsn-timeline"])
    (folder / "app.py").write_text(APP, "utf-8")
    return folder


@pytest.fixture(scope="module")
def env(workdir: Path) -> dict[str, str]:
    return cli_env(
        NODE_ENV="development",
        IPC_BROKER_KEY=KEY,
        CERTS_DIR=str(workdir / "certs"),
        IPC_LEAVE_GRACE="0",
        TERM="dumb",
    )


@pytest.fixture(scope="module")
def bridge_url(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """A Bridge for the commands that need one (serve, listen), run as a plain subprocess."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exprsn_ipc", "bridge", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # ends at EOF if the Bridge dies
        if "HTTPS listening on" in line:
            break
    else:
        pytest.fail(f"the Bridge did not start (exit {process.wait()})")
    try:
        yield f"https://localhost:{port}"
    finally:
        process.terminate()
        process.wait(30)


def command(*args: str) -> list[str]:
    script = shutil.which("exprsn-ipc")
    return [script, *args] if script else [sys.executable, "-m", "exprsn_ipc", *args]


def stop_and_check(process: PtyProcess, how: str) -> None:
    if how == "ctrl-c":
        process.ctrl_c()
    else:
        process.terminate()
    code = process.wait(60)
    assert "Traceback" not in process.text, process.text
    assert "CancelledError" not in process.text, process.text
    assert code == 0, process.text


STOPS = ["ctrl-c", "sigterm"]


@pytest.mark.parametrize("how", STOPS)
def test_bridge_stops_cleanly(workdir: Path, env: dict[str, str], how: str) -> None:
    process = PtyProcess.spawn(command("bridge", "--port", str(free_port())), env, str(workdir))
    process.expect("HTTPS listening on", 60)
    stop_and_check(process, how)
    assert "stopped" in process.text


@pytest.mark.parametrize("how", STOPS)
def test_serve_stops_cleanly(workdir: Path, env: dict[str, str], bridge_url: str, how: str) -> None:
    argv = command("serve", "app:app", "--service", "exprsn-timeline", "--port", str(free_port()))
    process = PtyProcess.spawn(argv, {**env, "BRIDGE_URL": bridge_url}, str(workdir))
    process.expect("HTTPS listening on", 60)
    stop_and_check(process, how)


@pytest.mark.parametrize("how", STOPS)
def test_listen_stops_cleanly(workdir: Path, env: dict[str, str], bridge_url: str, how: str) -> None:
    process = PtyProcess.spawn(command("listen", "--url", bridge_url), env, str(workdir))
    process.expect("listening as exprsn-cli", 60)
    stop_and_check(process, how)


@pytest.mark.parametrize("how", STOPS)
def test_demo_stops_cleanly(tmp_path: Path, env: dict[str, str], how: str) -> None:
    argv = command("demo", "--port-offset", str(free_port_offset()), "--dir", str(tmp_path / "demo"))
    process = PtyProcess.spawn(argv, env, str(tmp_path))
    process.expect("Everything is running", 90)
    stop_and_check(process, how)
