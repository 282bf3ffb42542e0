from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from exprsn_ipc import ConfigError, Settings
from exprsn_ipc.settings import load_or_create_key_file

KEY = "k" * 64


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("IPC_", "REDIS_", "BRIDGE_", "TLS_", "DEV_", "NODE_ENV", "CERTS_DIR", "CORS_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_guide_defaults() -> None:
    s = Settings.load(env_file=None, ipc_broker_key=KEY)
    assert s.tls_enabled is True
    assert s.certs_dir == Path("certs")
    assert s.ipc_token_ttl == 300
    assert s.ipc_rate_limit is True
    assert (s.ipc_rate_window, s.ipc_rate_max) == (60_000, 1000)
    assert s.dev_bypass is False
    assert s.bridge_url == "https://localhost:3010"
    assert s.bridge_port == 3010
    assert s.ipc_transport == "bridge"
    assert s.ipc_max_message_bytes == 1_048_576
    assert s.ipc_max_concurrency == 64
    assert s.effective_redis_url == "redis://localhost:6379/0"


def test_reads_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"IPC_BROKER_KEY={KEY}\nIPC_RATE_MAX=2000\nREDIS_HOST=cache\n")
    monkeypatch.setenv("IPC_RATE_MAX", "1500")  # the environment wins over .env
    monkeypatch.setenv("TLS_ENABLED", "false")
    s = Settings.load()
    assert s.ipc_rate_max == 1500
    assert s.tls_enabled is False
    assert s.effective_redis_url == "redis://cache:6379/0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IPC_RATE_MAX", "abc"),
        ("IPC_RATE_WINDOW", "0"),
        ("IPC_TOKEN_TTL", "-1"),
        ("IPC_TRANSPORT", "carrier-pigeon"),
        ("TLS_ENABLED", "maybe"),
        ("BRIDGE_PORT", "70000"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.load(env_file=None, ipc_broker_key=KEY)
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_secret_values_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PORT", "x")
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2-secret")
    with pytest.raises(ConfigError) as info:
        Settings.load(env_file=None, ipc_broker_key=KEY)
    assert "hunter2" not in str(info.value)
    s = Settings.load(env_file=None, ipc_broker_key=KEY, redis_port=6380)
    assert "hunter2" not in repr(s)
    assert KEY not in repr(s)
    assert s.effective_redis_url == "redis://:hunter2-secret@localhost:6380/0"


@pytest.mark.parametrize("node_env", ["production", "staging", "test"])
def test_missing_or_short_key_stops_start_up_outside_development(node_env: str) -> None:
    with pytest.raises(ConfigError, match="IPC_BROKER_KEY"):
        Settings.load(env_file=None, node_env=node_env)
    with pytest.raises(ConfigError, match="32 bytes"):
        Settings.load(env_file=None, node_env=node_env, ipc_broker_key="short")


def test_development_generates_one_key_and_persists_it(tmp_path: Path) -> None:
    first = Settings.load(env_file=None, node_env="development")
    second = Settings.load(env_file=None, node_env="development")
    key_file = tmp_path / ".exprsn-ipc" / "broker.key"
    assert first.ipc_broker_key is not None and second.ipc_broker_key is not None
    assert first.ipc_broker_key.get_secret_value() == second.ipc_broker_key.get_secret_value()
    assert key_file.read_text().strip() == first.ipc_broker_key.get_secret_value()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first.broker_key_bytes) >= 32


def test_unset_node_env_counts_as_development_for_the_key_but_never_for_the_bypass() -> None:
    s = Settings.load(env_file=None, dev_bypass=True)
    assert s.is_development
    assert s.bypass_enabled is False
    assert Settings.load(env_file=None, dev_bypass=True, node_env="development").bypass_enabled is True
    assert (
        Settings.load(env_file=None, dev_bypass=True, node_env="Development", ipc_broker_key=KEY).bypass_enabled
        is False
    )


def test_key_file_race_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "k" / "broker.key"
    keys = {load_or_create_key_file(path) for _ in range(5)}
    assert len(keys) == 1


def test_tls_verify_off_only_in_development() -> None:
    with pytest.raises(ConfigError, match="IPC_TLS_VERIFY"):
        Settings.load(env_file=None, ipc_broker_key=KEY, node_env="production", ipc_tls_verify=False)
    assert Settings.load(env_file=None, ipc_broker_key=KEY, node_env="development", ipc_tls_verify=False)


def test_lists() -> None:
    s = Settings.load(
        env_file=None,
        ipc_broker_key=KEY,
        cors_origin="https://a.example, https://b.example",
        ipc_allowed_services="timeline,exprsn-auth",
    )
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.allowed_services == frozenset({"timeline", "exprsn-auth"})
