"""The demo's own rules, in process: its settings, its folder, taken ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from exprsn_ipc.cli.demo import DemoError, DemoStack, HopRecorder, demo_settings
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.testing import make_test_settings

from .ports import free_port_offset


def test_demo_settings_ignore_the_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("IPC_RATE_MAX=1\nNODE_ENV=production\nIPC_BROKER_KEY=" + "x" * 40 + "\n")
    monkeypatch.setenv("IPC_TRANSPORT", "memory")
    monkeypatch.setenv("TLS_ENABLED", "false")
    settings = demo_settings(tmp_path / "demo", bridge_port=4010)
    assert settings.node_env == "development" and settings.bypass_enabled
    assert settings.ipc_rate_max == 1000 and settings.ipc_transport == "bridge" and settings.tls_enabled
    assert settings.certs_dir == tmp_path / "demo" / "certs"
    assert settings.bridge_url == "https://127.0.0.1:4010"
    key = (tmp_path / "demo" / "broker.key").read_text().strip()
    assert settings.broker_key_bytes == key.encode() and len(key) == 64
    # Generated once: a second run uses the same key.
    assert demo_settings(tmp_path / "demo", bridge_port=4010).broker_key_bytes == key.encode()


async def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    offset = free_port_offset()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 3004 + offset))
        busy.listen()
        stack = DemoStack(tmp_path / "demo", port_offset=offset)
        with pytest.raises(DemoError, match=rf"port {3004 + offset} \(exprsn-timeline\) is already in use"):
            await stack.start()
    assert not (tmp_path / "demo").exists()


async def test_hop_recorder_waits_for_matching_hops() -> None:
    settings = make_test_settings()
    signer = BrokerTokenManager(service_name="exprsn-a", settings=settings)
    hops = HopRecorder()
    hops("exprsn-a", "broadcast", signer.sign_envelope("x:y", {"n": 1}, target="broadcast").encode(), 2)
    first = await hops.wait_for("x:y", source="exprsn-a", where=lambda d: d["n"] == 1, timeout=1)
    assert first.receivers == 2 and first.target == "broadcast"
    with pytest.raises(AssertionError, match="no x:y"):
        await hops.wait_for("x:y", where=lambda d: d["n"] == 2, since=hops.mark(), timeout=0.05)
