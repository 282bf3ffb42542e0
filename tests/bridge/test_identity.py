"""Every service speaks only as itself (issue 14): the impersonation matrix at the Bridge.

Each attempt is refused with its own code, counted in /api/ipc/stats, and the Bridge
keeps serving a legitimate pair of workers throughout. The policy denials (event,
request, CRUD, JSONLex, revoke) have their own matrix in test_policy.py.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519

from exprsn_ipc.certs import generate_certificates
from exprsn_ipc.certs.credentials import (
    Credential,
    credential_paths,
    issue_credential,
    load_credential,
    revoke_credential,
)
from exprsn_ipc.certs.files import load_ca
from exprsn_ipc.certs.handshake import sign_handshake
from exprsn_ipc.errors import AuthError

from .conftest import WAIT, BridgeFixture, ConnectRefused, eventually, recorder, served_bridge

pytestmark = pytest.mark.timeout(90)


@dataclass
class Fleet:
    """A CA with credentials for auth and timeline, and a second, foreign CA."""

    certs: Path
    foreign: Path

    def credential(self, service: str, certs: Path | None = None) -> Credential:
        return load_credential(credential_paths(certs or self.certs, service)[1])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    certs, foreign = tmp_path_factory.mktemp("certs"), tmp_path_factory.mktemp("foreign")
    for folder in (certs, foreign):
        generate_certificates(folder, only=[])
        issue_credential(folder, "auth")
        issue_credential(folder, "timeline")
    yield Fleet(certs, foreign)


@pytest.fixture
async def bridge(fleet: Fleet, tmp_path: Path) -> AsyncIterator[BridgeFixture]:
    # A copy per test: revocations in one test must not reach the next.
    import shutil

    certs = tmp_path / "certs"
    shutil.copytree(fleet.certs, certs)
    async with served_bridge(certs_dir=certs, ipc_credential_recheck=0.1) as served:
        yield served


def _handshake_with(cert: x509.Certificate, key: ed25519.Ed25519PrivateKey, service: str) -> str:
    return sign_handshake(Credential(service, key, cert))


def _expired_credential(certs: Path, service: str) -> Credential:
    """A credential the CA really issued, but whose validity ended yesterday."""
    ca_cert, ca_key = load_ca(certs)
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, service)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:exprsn-ipc:service:{service}")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Credential(service, key, cert)


def _code(refusal: ConnectRefused) -> str:
    """The code a refusal starts with ("CREDENTIAL_MISMATCH: the credential of ...")."""
    data = refusal.args[0]
    if isinstance(data, str) and data.startswith("{"):
        data = ast.literal_eval(data)  # python-socketio hands some refusals over as their repr
    message = data.get("message") if isinstance(data, dict) else data
    return str(message).partition(":")[0]


async def _refused(bridge: BridgeFixture, namespace: str, token: str) -> str:
    with pytest.raises(ConnectRefused) as refused:
        await bridge.client(namespace).connect({"token": token})
    return _code(refused.value)


async def test_the_impersonation_matrix(bridge: BridgeFixture, fleet: Fleet) -> None:
    auth_worker = await bridge.worker("exprsn-auth", setup=lambda w: w.on("user:validate", lambda d, m: {"ok": True}))
    timeline = await bridge.worker("exprsn-timeline")
    auth = fleet.credential("exprsn-auth", bridge.settings.certs_dir)
    mine = fleet.credential("exprsn-timeline", bridge.settings.certs_dir)
    foreign = fleet.credential("exprsn-auth", fleet.foreign)
    expired = _expired_credential(bridge.settings.certs_dir, "exprsn-auth")

    used = sign_handshake(auth)
    first = await bridge.client("/ipc/exprsn-auth").connect({"token": used})

    attempts = {
        # No credential at all.
        "UNAUTHORIZED": ("/ipc/exprsn-auth", None),
        # The shared key alone, for a service that has its own credential.
        "CREDENTIAL_REQUIRED": ("/ipc/exprsn-auth", bridge.token("exprsn-auth")),
        # Timeline's own valid credential, presented as auth.
        "CREDENTIAL_MISMATCH": ("/ipc/exprsn-auth", sign_handshake(mine)),
        # Auth's (public) certificate, signed with timeline's key.
        "CREDENTIAL_INVALID": ("/ipc/exprsn-auth", _handshake_with(auth.certificate, mine.key, "exprsn-auth")),
        # A credential for auth from another CA.
        "CREDENTIAL_UNTRUSTED": ("/ipc/exprsn-auth", sign_handshake(foreign)),
        # One the CA issued, expired.
        "CREDENTIAL_EXPIRED": ("/ipc/exprsn-auth", sign_handshake(expired)),
    }
    for code, (namespace, token) in attempts.items():
        auth_body = {} if token is None else {"token": token}
        with pytest.raises(ConnectRefused) as refused:
            await bridge.client(namespace).connect(auth_body)
        assert _code(refused.value) == code, (code, refused.value)
        # The legitimate pair is served between every two attempts.
        assert await timeline.request("exprsn-auth", "user:validate", {}, timeout=WAIT) == {"ok": True}

    # A copied handshake token is good once.
    assert await _refused(bridge, "/ipc/exprsn-auth", used) == "CREDENTIAL_INVALID"
    await first.close()

    rejected = (await bridge.stats())["counters"]["rejected"]
    for code in attempts:
        assert rejected.get(code, 0) >= 1, (code, rejected)
    assert rejected["CREDENTIAL_INVALID"] == 2
    assert auth_worker.transport.connected


async def test_messages_carry_the_connection_trust(bridge: BridgeFixture) -> None:
    auth = await bridge.worker("exprsn-auth")
    herald = await bridge.worker("exprsn-herald")  # no credential: the shared key, still allowed
    received = recorder(auth, "hello")
    timeline = await bridge.worker("exprsn-timeline")
    await timeline.emit("hello", {"n": 1}, target="exprsn-auth")
    await herald.emit("hello", {"n": 2}, target="exprsn-auth")
    got = [await asyncio.wait_for(received.get(), WAIT) for _ in range(2)]
    assert sorted((meta.source, meta.trust) for _, meta in got) == [
        ("exprsn-herald", "shared-key"),
        ("exprsn-timeline", "credential"),
    ]
    trusts = {conn.service: conn.trust for conn in bridge.bridge.connections.values()}
    assert trusts == {"exprsn-auth": "credential", "exprsn-herald": "shared-key", "exprsn-timeline": "credential"}


async def test_revoking_a_credential_closes_its_live_connections_and_refuses_the_next(bridge: BridgeFixture) -> None:
    auth = await bridge.worker("exprsn-auth", setup=lambda w: w.on("ping", lambda d, m: "pong"))
    timeline = await bridge.worker("exprsn-timeline")
    certs = bridge.settings.certs_dir
    revoke_credential(certs, "exprsn-timeline")

    async def closed() -> bool:
        return not any(c.service == "exprsn-timeline" for c in bridge.bridge.connections.values())

    await eventually(closed, what="the revoked credential's connection closed")
    assert not timeline.transport.connected
    # The next connection with it is refused, by its own code.
    token = sign_handshake(load_credential(credential_paths(certs, "exprsn-timeline")[1]))
    assert await _refused(bridge, "/ipc/exprsn-timeline", token) == "CREDENTIAL_REVOKED"
    # A new credential works again, and auth was never disturbed.
    issue_credential(certs, "exprsn-timeline")
    again = await bridge.worker("exprsn-timeline")
    assert await again.request("exprsn-auth", "ping", {}, timeout=WAIT) == "pong"
    assert auth.transport.connected
    rejected = (await bridge.stats())["counters"]["rejected"]
    assert rejected["CREDENTIAL_REVOKED"] >= 2  # the live connection closed, the next one refused


async def test_the_shared_key_list_shrinks_as_services_migrate(fleet: Fleet, tmp_path: Path) -> None:
    async with served_bridge(certs_dir=tmp_path, ipc_shared_key_services="herald,pulse") as bridge:
        await bridge.connect("/ipc/exprsn-herald")
        assert await _refused(bridge, "/ipc/exprsn-moderator", bridge.token("exprsn-moderator")) == (
            "CREDENTIAL_REQUIRED"
        )
        # A worker that is refused says what to do next.
        with pytest.raises(AuthError, match=r"CREDENTIAL_REQUIRED.*IPC_SHARED_KEY_SERVICES") as refused:
            await bridge.worker("exprsn-moderator")
        assert refused.value.code == "CREDENTIAL_REQUIRED"


async def test_a_worker_with_another_services_credential_file_does_not_start(bridge: BridgeFixture) -> None:
    from exprsn_ipc.errors import CertificateError
    from exprsn_ipc.testing import make_test_settings
    from exprsn_ipc.worker.core import IPCWorker

    settings = make_test_settings(
        certs_dir=bridge.settings.certs_dir,
        ipc_credential=credential_paths(bridge.settings.certs_dir, "exprsn-auth")[1],
    )
    with pytest.raises(CertificateError, match="credential of exprsn-auth, not exprsn-timeline"):
        IPCWorker("exprsn-timeline", settings=settings)
