"""The wheel holds everything the package needs at run time, and runs the demo from a virtual environment.

This is how a user gets exprsn-ipc: ``pip install exprsn_ipc-*.whl``. Everything the
demo needs (the example services, the dashboard's files, ``py.typed``) must be in
the wheel; nothing may be read from the checkout. :func:`assert_demo_runs_from` is
the check on an installed wheel: the README newcomer walk
(``tests/docs/test_docs.py``) runs it on the fresh virtual environment the README
installs the wheel into, so no second environment is built here for it.
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


def assert_demo_runs_from(venv: Path, work: Path, *, checkouts: tuple[Path, ...], **env_values: str) -> None:
    """``exprsn-ipc demo --once`` from ``venv`` (a wheel installed into it), run in the empty
    folder ``work`` outside every checkout: the package is imported from the venv, the
    journey passes, and nothing but the demo's own folder is written."""
    env = {**demo_env(), **env_values}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    work.mkdir()
    python = venv / "bin" / "python"
    where = Path(
        run([str(python), "-c", "import exprsn_ipc; print(exprsn_ipc.__file__)"], cwd=work, timeout=60, env=env).strip()
    )
    assert where.is_relative_to(venv), f"imported {where}, not the wheel's copy in {venv}"
    assert not any(where.is_relative_to(checkout) for checkout in checkouts), f"imported {where} from a checkout"

    offset = free_port_offset()
    command = [str(venv / "bin" / "exprsn-ipc"), "demo", "--once", "--port-offset", str(offset), "--dir", "demo"]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120, env=env, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert_journey(output)
    assert os.listdir(work) == ["demo"]
