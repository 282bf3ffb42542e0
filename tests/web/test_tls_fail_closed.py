"""TLS fails closed in production: no certificate, or an unusable one, stops the server (issue 14, item 5)."""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette

from exprsn_ipc.certs.builder import build_leaf, new_key
from exprsn_ipc.certs.files import cert_paths, load_ca
from exprsn_ipc.errors import CertificateError
from exprsn_ipc.web.https import HTTPSServerManager

from ..cli.test_check import cli_env, run_cli
from .conftest import PKI, SERVICE, free_port, make_settings

pytestmark = pytest.mark.timeout(60)


def _expired_copy(pki: PKI, tmp_path: Path) -> Path:
    """A certs folder whose service certificate, issued by our CA, expired yesterday."""
    folder = tmp_path / "certs"
    shutil.copytree(pki.certs_dir, folder)
    ca_cert, ca_key = load_ca(folder)
    cert_path, key_path = cert_paths(folder, SERVICE)
    key = new_key(2048)
    past = _dt.datetime.now(_dt.UTC) - _dt.timedelta(days=30)
    leaf = build_leaf(SERVICE, key, ca_cert, ca_key, days=29, now=past)
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder


async def test_production_without_certificates_refuses_to_start(tmp_path: Path) -> None:
    settings = make_settings(node_env="production")
    manager = HTTPSServerManager(SERVICE, 0, settings=settings, certs_dir=tmp_path / "none")
    with pytest.raises(CertificateError, match=r"exprsn-ipc certs generate.*TLS_ENABLED=false") as caught:
        await manager.start(Starlette())
    assert "NODE_ENV=production" in str(caught.value)
    assert manager.servers is None


async def test_production_with_tls_disabled_explicitly_serves_plain_http(tmp_path: Path) -> None:
    settings = make_settings(node_env="production", tls_enabled=False)
    manager = HTTPSServerManager(SERVICE, 0, settings=settings, certs_dir=tmp_path / "none")
    servers = await manager.start(Starlette())
    try:
        assert servers.https is None and servers.http is not None
    finally:
        await manager.stop()


async def test_production_with_an_expired_certificate_refuses_to_start(pki: PKI, tmp_path: Path) -> None:
    folder = _expired_copy(pki, tmp_path)
    manager = HTTPSServerManager(SERVICE, 0, settings=make_settings(node_env="production"), certs_dir=folder)
    with pytest.raises(CertificateError, match=r"is expired.*exprsn-ipc certs generate"):
        await manager.start(Starlette())


async def test_production_with_a_certificate_that_does_not_parse_refuses_to_start(pki: PKI, tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    shutil.copytree(pki.certs_dir, folder)
    cert_paths(folder, SERVICE)[0].write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    manager = HTTPSServerManager(SERVICE, 0, settings=make_settings(node_env="production"), certs_dir=folder)
    with pytest.raises(CertificateError):
        await manager.start(Starlette())


async def test_development_keeps_serving_an_expired_certificate_and_plain_http(pki: PKI, tmp_path: Path) -> None:
    """Outside production nothing changes: a warning and plain HTTP, or the certificate as it is."""
    for folder in (tmp_path / "none", _expired_copy(pki, tmp_path)):
        manager = HTTPSServerManager(SERVICE, 0, settings=make_settings(node_env="development"), certs_dir=folder)
        await manager.start(Starlette())
        await manager.stop()


async def test_the_bridge_command_stops_with_the_fix_in_production(tmp_path: Path) -> None:
    env = cli_env(
        NODE_ENV="production",
        IPC_BROKER_KEY="k" * 40,
        BRIDGE_PORT=str(free_port()),
        CERTS_DIR=str(tmp_path / "no-certs"),
    )
    code, _, err = await run_cli("bridge", env=env, cwd=tmp_path)
    assert code == 1
    assert "TLS is required with NODE_ENV=production" in err
    assert "exprsn-ipc certs generate" in err and "TLS_ENABLED=false" in err
    assert not (tmp_path / "no-certs").exists()  # nothing generated outside development
