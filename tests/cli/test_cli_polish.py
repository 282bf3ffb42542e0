"""The CLI's rough edges, each found by following the README literally, and fixed.

Each test fails on the CLI as it was before: no --version, <bool> placeholders,
options without help, errors without a next step, read-only commands writing a
key file, a certificate warning on every run.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from exprsn_ipc import __version__
from exprsn_ipc.certs.authority import generate_certificates
from exprsn_ipc.cli import COMMAND_ORDER, app
from exprsn_ipc.testing import make_test_settings

from ..servers import serve
from .test_check import cli_env, key_of, run_cli, served

READ_ONLY = [
    ("check",),
    ("stats",),
    ("emit", "test:ping", "{}"),
    ("listen",),
    ("doctor", "--service", "exprsn-timeline"),
    ("certs", "show", "exprsn-timeline"),
    ("certs", "verify"),
    ("certs", "list"),
    ("dlq", "list", "exprsn-herald"),
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


async def test_version(tmp_path: Path) -> None:
    code, out, err = await run_cli("--version", env=cli_env(), cwd=tmp_path)
    assert (code, out.strip()) == (0, f"exprsn-ipc {__version__}"), err


def _commands(group: object, prefix: str = "") -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for name, command in getattr(group, "commands", {}).items():
        found.append((f"{prefix}{name}", command))
        found += _commands(command, f"{prefix}{name} ")
    return found


def test_every_option_and_argument_has_help_and_no_placeholder() -> None:
    root = get_command(app)
    missing = [
        f"{path} {param.name}"
        for path, command in _commands(root)
        for param in getattr(command, "params", [])
        if not getattr(param, "help", None)
    ]
    assert missing == [], f"options without help text: {missing}"
    runner = CliRunner()
    for path, _ in [("", root), *_commands(root)]:
        done = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"})
        assert done.exit_code == 0, done.output
        assert "<bool>" not in done.output and "<str>" not in done.output.split("Options:")[-1], done.output


def test_commands_are_listed_in_the_guides_order() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exprsn_ipc", "--help"], capture_output=True, text=True, env=cli_env(), check=True
    )
    listed = [line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines() if line.startswith("  ")]
    assert listed == [name for name in COMMAND_ORDER if name in listed]
    assert listed[:4] == ["certs", "init", "bridge", "serve"]


@pytest.mark.parametrize("args", READ_ONLY, ids=[" ".join(a) for a in READ_ONLY])
async def test_read_only_commands_write_no_file(tmp_path: Path, args: tuple[str, ...]) -> None:
    """In development with no key anywhere: they may fail, but they leave the folder as it was."""
    env = cli_env(NODE_ENV="development", BRIDGE_URL=f"https://127.0.0.1:{closed_port()}")
    env["REDIS_URL"] = f"redis://127.0.0.1:{closed_port()}/0"
    await run_cli(*args, env=env, cwd=tmp_path)
    assert files_in(tmp_path) == []


async def test_certs_generate_writes_certificates_only(tmp_path: Path) -> None:
    code, out, err = await run_cli("certs", "generate", env=cli_env(NODE_ENV="development"), cwd=tmp_path)
    assert code == 0, out + err
    assert {Path(name).parts[0] for name in files_in(tmp_path)} == {"certs"}


async def test_check_with_the_bridge_down_says_to_start_it(tmp_path: Path) -> None:
    env = cli_env(IPC_BROKER_KEY="k" * 64)
    code, out, _ = await run_cli("check", "--url", f"http://127.0.0.1:{closed_port()}", env=env, cwd=tmp_path)
    assert code == 1
    assert "start the Bridge first (`exprsn-ipc bridge`)" in out
    assert "All connection attempts failed" not in out


async def test_check_without_the_ca_says_what_to_trust(tmp_path: Path) -> None:
    certs = tmp_path / "elsewhere"
    generate_certificates(certs, only=["exprsn-bridge"])
    settings = make_test_settings(ipc_transport="bridge")
    from exprsn_ipc.bridge import MemoryBackend, create_app

    bridge = create_app(settings, backend=MemoryBackend())
    tls = {"ssl_certfile": str(certs / "localhost-cert.pem"), "ssl_keyfile": str(certs / "localhost-key.pem")}
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with serve(bridge, **tls) as url:
        code, out, _ = await run_cli(
            "check",
            "--url",
            url.replace("127.0.0.1", "localhost"),
            env=cli_env(IPC_BROKER_KEY=key_of(settings)),
            cwd=workdir,
        )
    assert code == 1
    assert "is not trusted" in out and "CERTS_DIR" in out, out


async def test_listen_with_a_wrong_key_says_to_compare_keys(tmp_path: Path) -> None:
    settings = make_test_settings(ipc_transport="bridge")
    async with served(settings) as url:
        code, out, err = await run_cli("listen", "--url", url, env=cli_env(IPC_BROKER_KEY="w" * 64), cwd=tmp_path)
    assert code == 1
    assert "compare IPC_BROKER_KEY with the Bridge's" in out + err
    assert "One or more namespaces failed to connect" not in out + err


async def test_certs_verify_without_certificates_says_to_generate_them(tmp_path: Path) -> None:
    code, out, err = await run_cli("certs", "verify", env=cli_env(), cwd=tmp_path)
    assert code == 1
    assert "exprsn-ipc certs generate" in out + err
    (tmp_path / "certs").mkdir()
    code, out, err = await run_cli("certs", "verify", env=cli_env(), cwd=tmp_path)
    assert code == 1
    assert "no certificates in certs: run `exprsn-ipc certs generate`" in out + err


def test_reusing_certificates_prints_no_warning(tmp_path: Path) -> None:
    """cryptography 50 deprecates finite-field DH; loading our CA must not touch that module."""
    for _ in range(2):  # the second run loads the existing CA
        done = subprocess.run(
            [sys.executable, "-W", "error", "-m", "exprsn_ipc", "certs", "generate", "--services", "exprsn-x"],
            capture_output=True,
            text=True,
            env=cli_env(),
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Warning" not in done.stderr, done.stderr


async def test_dlq_with_redis_down_says_to_start_it(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    code, out, err = await run_cli("dlq", "list", "exprsn-herald", "--redis-url", url, env=cli_env(), cwd=tmp_path)
    assert code == 1
    assert "start redis-server or fix REDIS_URL/--redis-url" in out + err
