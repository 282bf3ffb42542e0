"""The wheel, installed in a fresh virtual environment outside the checkout, runs the demo.

This is how a user gets exprsn-ipc: ``pip install exprsn_ipc-*.whl``. Everything the
demo needs (the example services, the dashboard's files, ``py.typed``) must be in
the wheel; nothing may be read from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .ports import free_port_offset
from .test_demo import assert_journey, demo_env

ROOT = Path(__file__).resolve().parents[2]

#: Files other than Python modules the package needs at run time.
PACKAGE_DATA = (
    "exprsn_ipc/py.typed",
    "exprsn_ipc/bridge/dashboard/static/index.html",
    "exprsn_ipc/bridge/dashboard/static/dashboard.js",
    "exprsn_ipc/bridge/dashboard/static/socket.io.min.js",
    "exprsn_ipc/examples/exprsn_auth/app.py",
    "exprsn_ipc/sio/SPEC.md",
)


def run(command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], cwd=out, timeout=240)
    (built,) = out.glob("exprsn_ipc-*.whl")
    return built


def test_the_wheel_holds_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in PACKAGE_DATA if name not in names]
    assert missing == []
    assert not any(name.startswith(("tests/", "services/", "benchmarks/")) for name in names)


@pytest.mark.timeout(420)
def test_demo_once_from_a_wheel_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    env = demo_env()
    env.pop("PYTHONPATH", None)
    run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        cwd=tmp_path,
        timeout=300,
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([str(python), "-c", "import exprsn_ipc; print(exprsn_ipc.__file__)"], cwd=work, timeout=60, env=env)
    assert Path(where.strip()).is_relative_to(venv), f"imported {where.strip()}, not the wheel's copy"
    assert not Path(where.strip()).is_relative_to(ROOT)

    offset = free_port_offset()
    cli = venv / "bin" / "exprsn-ipc"
    command = [str(cli), "demo", "--once", "--port-offset", str(offset), "--dir", str(work / "demo")]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120, env=env, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert_journey(output)
    assert os.listdir(work) == ["demo"]
