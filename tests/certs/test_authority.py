"""Tests for exprsn_ipc.certs.authority: the development CA and per-service TLS certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import shutil
import socket
import ssl
import stat
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exprsn_ipc.certs.authority import (
    KNOWN_SERVICES,
    CertificateRecord,
    GenerationReport,
    cert_paths,
    certificate_info,
    find_certificate,
    format_report,
    generate_certificates,
    load_ca,
    normalize_service_name,
    verify_all,
    verify_certificate,
)
from exprsn_ipc.errors import CertificateError

POSIX = sys.platform != "win32"
DAY = dt.timedelta(days=1)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _fingerprint(path: Path) -> bytes:
    return _cert(path).fingerprint(hashes.SHA256())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- #
# Fixtures: generate once per module, copy for tests that change files
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationReport]:
    certs_dir = tmp_path_factory.mktemp("gen") / "certs"  # does not exist yet
    report = generate_certificates(certs_dir)
    return certs_dir, report


@pytest.fixture(scope="module")
def certs_dir(generated: tuple[Path, GenerationReport]) -> Path:
    return generated[0]


@pytest.fixture(scope="module")
def report(generated: tuple[Path, GenerationReport]) -> GenerationReport:
    return generated[1]


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA with a timeline certificate."""
    directory = tmp_path_factory.mktemp("other")
    generate_certificates(directory, only=["timeline"])
    return directory


@pytest.fixture
def workdir(certs_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the module's certificates, free to modify."""
    target = tmp_path / "certs"
    shutil.copytree(certs_dir, target)
    return target


# --------------------------------------------------------------------------- #
# Layout
# --------------------------------------------------------------------------- #


def test_known_services() -> None:
    assert len(KNOWN_SERVICES) == 19
    assert list(KNOWN_SERVICES)[:4] == ["exprsn-ca", "exprsn-auth", "exprsn-spark", "exprsn-timeline"]
    assert KNOWN_SERVICES["exprsn-timeline"] == 3004
    assert KNOWN_SERVICES["exprsn-atlas"] == 3019
    assert KNOWN_SERVICES["exprsn-svr"] == 5001
    assert list(KNOWN_SERVICES)[-1] == "exprsn-svr"


def test_all_files_exist(certs_dir: Path, report: GenerationReport) -> None:
    expected = {"ca", "localhost", *KNOWN_SERVICES}
    for stem in expected:
        assert (certs_dir / f"{stem}-cert.pem").is_file(), stem
        assert (certs_dir / f"{stem}-key.pem").is_file(), stem
    names = sorted(p.name for p in certs_dir.iterdir())
    assert len(names) == 2 * len(expected)  # nothing else, e.g. no leftover temp files
    assert [r.name for r in report.services] == list(KNOWN_SERVICES)
    assert all(r.action == "created" for r in report.certificates)
    assert report.get("timeline").port == 3004
    assert report.localhost.port is None
    assert report.ca.cert_path == certs_dir / "ca-cert.pem"
    assert report.certs_dir == certs_dir


@pytest.mark.skipif(not POSIX, reason="POSIX file modes")
def test_file_modes(certs_dir: Path) -> None:
    for path in certs_dir.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name.endswith("-key.pem") else 0o644), path.name


def test_keys_are_unencrypted_pkcs8(certs_dir: Path) -> None:
    for path in certs_dir.glob("*-key.pem"):
        assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----\n"), path.name


# --------------------------------------------------------------------------- #
# CA
# --------------------------------------------------------------------------- #


def test_ca_certificate(certs_dir: Path) -> None:
    ca = _cert(certs_dir / "ca-cert.pem")
    assert ca.subject == ca.issuer
    assert ca.subject.rfc4514_string() == (
        "OU=Certificate Authority,O=Exprsn IO,L=San Francisco,ST=California,C=US,CN=Exprsn Root CA"
    )
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is True
    assert bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert not ku.value.key_encipherment
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    ca.verify_directly_issued_by(ca)


def test_load_ca(certs_dir: Path) -> None:
    cert, key = load_ca(certs_dir)
    assert cert.fingerprint(hashes.SHA256()) == _fingerprint(certs_dir / "ca-cert.pem")
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def test_load_ca_errors(workdir: Path) -> None:
    (workdir / "ca-key.pem").unlink()
    with pytest.raises(CertificateError, match="not found"):
        load_ca(workdir)
    shutil.copy(workdir / "localhost-key.pem", workdir / "ca-key.pem")
    with pytest.raises(CertificateError, match="does not match"):
        load_ca(workdir)
    shutil.copy(workdir / "localhost-cert.pem", workdir / "ca-cert.pem")
    with pytest.raises(CertificateError, match="not a CA"):
        load_ca(workdir)


# --------------------------------------------------------------------------- #
# Leaves
# --------------------------------------------------------------------------- #


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


@pytest.mark.parametrize("service", ["exprsn-timeline", "exprsn-ca", "exprsn-svr", "exprsn-bridge"])
def test_leaf_subject_and_sans(certs_dir: Path, service: str) -> None:
    cert = _cert(certs_dir / f"{service}-cert.pem")
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert cn == service
    assert ou == service
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Exprsn IO"
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "US"
    assert _sans(cert) == ({"localhost", "*.localhost", service}, {"127.0.0.1", "::1"})


def test_localhost_fallback_subject_and_sans(certs_dir: Path) -> None:
    cert = _cert(certs_dir / "localhost-cert.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    assert _sans(cert) == ({"localhost", "*.localhost"}, {"127.0.0.1", "::1"})
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(ext)) == 4
    assert ipaddress.ip_address("::1") in ext.get_values_for_type(x509.IPAddress)


def test_leaf_extensions(certs_dir: Path) -> None:
    ca = _cert(certs_dir / "ca-cert.pem")
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    for stem in ["localhost", *KNOWN_SERVICES]:
        cert = _cert(certs_dir / f"{stem}-cert.pem")
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca is False
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
        assert not ku.value.key_cert_sign
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_serials_unique(certs_dir: Path) -> None:
    serials = [_cert(p).serial_number for p in certs_dir.glob("*-cert.pem")]
    assert len(serials) == 21
    assert len(set(serials)) == len(serials)
    assert all(s > 0 for s in serials)


def test_default_validity(certs_dir: Path) -> None:
    now = _now()
    ca = _cert(certs_dir / "ca-cert.pem")
    leaf = _cert(certs_dir / "exprsn-timeline-cert.pem")
    for cert, days in ((ca, 3650), (leaf, 730)):
        assert abs(cert.not_valid_after_utc - (now + days * DAY)) < dt.timedelta(minutes=2)
        # backdated by 5 minutes for clock skew
        backdate = now - cert.not_valid_before_utc
        assert dt.timedelta(minutes=4) < backdate < dt.timedelta(minutes=7)


def test_chain_verifies(certs_dir: Path) -> None:
    ca = _cert(certs_dir / "ca-cert.pem")
    for stem in ["localhost", *KNOWN_SERVICES]:
        _cert(certs_dir / f"{stem}-cert.pem").verify_directly_issued_by(ca)


def test_custom_validity(tmp_path: Path) -> None:
    report = generate_certificates(tmp_path, only=[], ca_days=100, leaf_days=50)
    now = _now()
    assert report.services == ()
    assert abs(report.ca.not_after - (now + 100 * DAY)) < dt.timedelta(minutes=2)
    assert abs(report.localhost.not_after - (now + 50 * DAY)) < dt.timedelta(minutes=2)
    assert _cert(tmp_path / "localhost-cert.pem").not_valid_after_utc == report.localhost.not_after


def test_leaf_never_outlives_ca(tmp_path: Path) -> None:
    report = generate_certificates(tmp_path, only=[], ca_days=40, leaf_days=730)
    assert report.localhost.not_after == report.ca.not_after


# --------------------------------------------------------------------------- #
# Re-running, force, renewal
# --------------------------------------------------------------------------- #


def test_second_run_keeps_everything(workdir: Path) -> None:
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    report = generate_certificates(workdir)
    assert {r.action for r in report.certificates} == {"kept"}
    assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before
    lines = format_report(report)
    assert any(line.startswith("📜 Root CA kept") for line in lines)
    assert "  ✓ exprsn-timeline (port 3004) [kept]" in lines


def test_extra_service_added_and_rest_kept(workdir: Path) -> None:
    ca_before = _fingerprint(workdir / "ca-cert.pem")
    report = generate_certificates(workdir, only=["timeline"], extra_services=["foo-bar", "timeline"])
    assert report.ca.action == "kept"
    assert _fingerprint(workdir / "ca-cert.pem") == ca_before
    assert [r.name for r in report.services] == ["exprsn-timeline", "exprsn-foo-bar"]
    assert report.get("timeline").action == "kept"
    extra = report.get("foo-bar")
    assert extra.action == "created"
    assert extra.port is None
    assert extra.cert_path == workdir / "exprsn-foo-bar-cert.pem"
    cert = _cert(extra.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "exprsn-foo-bar"
    cert.verify_directly_issued_by(_cert(workdir / "ca-cert.pem"))
    assert "  ✓ exprsn-foo-bar" in format_report(report)


def test_extra_services_add_to_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exprsn_ipc.certs.authority as certs

    monkeypatch.setattr(certs, "KNOWN_SERVICES", {"exprsn-timeline": 3004, "exprsn-auth": 3001})
    report = generate_certificates(tmp_path, extra_services=["zeta"])
    assert [(r.name, r.port) for r in report.services] == [
        ("exprsn-timeline", 3004),
        ("exprsn-auth", 3001),
        ("exprsn-zeta", None),
    ]


def test_only_restricts_services(tmp_path: Path) -> None:
    report = generate_certificates(tmp_path, only=["timeline", "exprsn-timeline"])
    assert [r.name for r in report.services] == ["exprsn-timeline"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca-cert.pem",
        "ca-key.pem",
        "exprsn-timeline-cert.pem",
        "exprsn-timeline-key.pem",
        "localhost-cert.pem",
        "localhost-key.pem",
    ]


def test_force_regenerates_ca_and_leaves(workdir: Path) -> None:
    old_ca = _cert(workdir / "ca-cert.pem")
    old_leaf = _fingerprint(workdir / "exprsn-timeline-cert.pem")
    report = generate_certificates(workdir, force=True, only=["timeline"])
    assert report.ca.action == "renewed"
    assert report.localhost.action == "renewed"
    assert report.get("timeline").action == "renewed"
    new_ca = _cert(workdir / "ca-cert.pem")
    assert new_ca.serial_number != old_ca.serial_number
    assert new_ca.fingerprint(hashes.SHA256()) != old_ca.fingerprint(hashes.SHA256())
    assert _fingerprint(workdir / "exprsn-timeline-cert.pem") != old_leaf
    _cert(workdir / "exprsn-timeline-cert.pem").verify_directly_issued_by(new_ca)
    # a leaf that was not selected still belongs to the old CA (documented caveat)
    assert not verify_certificate(workdir, "auth").ok


def test_missing_leaf_is_reissued(workdir: Path) -> None:
    (workdir / "exprsn-timeline-key.pem").unlink()
    report = generate_certificates(workdir, only=["timeline", "auth"])
    assert report.get("timeline").action == "renewed"
    assert {r.action for r in report.certificates if r.name != "exprsn-timeline"} == {"kept"}
    assert verify_certificate(workdir, "timeline").ok
    assert "  ✓ exprsn-timeline (port 3004) [renewed]" in format_report(report)


def test_foreign_leaf_is_reissued(workdir: Path, other_dir: Path) -> None:
    for suffix in ("cert", "key"):
        shutil.copy(other_dir / f"exprsn-timeline-{suffix}.pem", workdir / f"exprsn-timeline-{suffix}.pem")
    report = generate_certificates(workdir, only=["timeline"])
    assert report.get("timeline").action == "renewed"
    assert verify_certificate(workdir, "timeline").ok


def test_expiring_leaf_warns_and_is_renewed(tmp_path: Path) -> None:
    first = generate_certificates(tmp_path, only=["timeline"], leaf_days=10)
    result = verify_certificate(tmp_path, "timeline")
    assert result.ok
    assert result.days_left == 9
    assert result.warning is not None and "expires in 9 days" in result.warning
    assert verify_certificate(tmp_path, "ca").warning is None
    second = generate_certificates(tmp_path, only=["timeline"])
    assert second.ca.action == "kept"
    assert second.get("timeline").action == "renewed"
    assert second.get("timeline").not_after > first.get("timeline").not_after + 700 * DAY
    assert verify_certificate(tmp_path, "timeline").warning is None


@pytest.mark.skipif(not POSIX, reason="POSIX file modes")
def test_rewritten_key_gets_0600(workdir: Path) -> None:
    key = workdir / "exprsn-timeline-key.pem"
    key.chmod(0o644)
    (workdir / "exprsn-timeline-cert.pem").unlink()
    generate_certificates(workdir, only=["timeline"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not [p for p in workdir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "damage",
    ["garbage-key", "garbage-cert", "mismatch", "cert-only", "key-only"],
)
def test_unusable_ca_requires_force(workdir: Path, damage: str) -> None:
    ca_cert, ca_key = workdir / "ca-cert.pem", workdir / "ca-key.pem"
    if damage == "garbage-key":
        ca_key.write_text("not a key")
    elif damage == "garbage-cert":
        ca_cert.write_text("not a cert")
    elif damage == "mismatch":
        shutil.copy(workdir / "localhost-key.pem", ca_key)
    elif damage == "cert-only":
        ca_key.unlink()
    else:
        ca_cert.unlink()
    before = (workdir / "exprsn-timeline-cert.pem").read_bytes()
    with pytest.raises(CertificateError, match="--force"):
        generate_certificates(workdir, only=["timeline"])
    assert (workdir / "exprsn-timeline-cert.pem").read_bytes() == before  # nothing written
    report = generate_certificates(workdir, only=["timeline"], force=True)
    assert report.ca.action == "renewed"
    assert verify_certificate(workdir, "ca").ok
    assert verify_certificate(workdir, "timeline").ok


def test_expiring_ca_requires_force(tmp_path: Path) -> None:
    generate_certificates(tmp_path, only=[], ca_days=10)
    with pytest.raises(CertificateError, match=r"expires in 9 days.*--force"):
        generate_certificates(tmp_path, only=[])


# --------------------------------------------------------------------------- #
# Names and parameters
# --------------------------------------------------------------------------- #


def test_normalize_service_name() -> None:
    assert normalize_service_name("timeline") == "exprsn-timeline"
    assert normalize_service_name("exprsn-timeline") == "exprsn-timeline"
    assert normalize_service_name("x2") == "exprsn-x2"


@pytest.mark.parametrize(
    "name",
    ["", "Timeline", "foo_bar", "foo bar", "-foo", "foo-", "../etc", "exprsn-", "a" * 57, "fóo", "foo.bar"],
)
def test_bad_service_name_rejected(tmp_path: Path, name: str) -> None:
    target = tmp_path / "certs"
    with pytest.raises(CertificateError, match="invalid service name"):
        generate_certificates(target, extra_services=[name])
    assert not target.exists()  # validated before anything is written
    with pytest.raises(CertificateError):
        normalize_service_name(name)


def test_longest_valid_name() -> None:
    name = "a" * 56  # 7 + 56 = 63 characters
    assert normalize_service_name(name) == "exprsn-" + name


def test_string_instead_of_list_rejected(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="not a string"):
        generate_certificates(tmp_path, extra_services="timeline")


@pytest.mark.parametrize("kwargs", [{"leaf_days": 0}, {"ca_days": -1}, {"key_size": 512}, {"leaf_days": True}])
def test_bad_parameters_rejected(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(CertificateError):
        generate_certificates(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_cert_paths(tmp_path: Path) -> None:
    assert cert_paths(tmp_path, "timeline") == (
        tmp_path / "exprsn-timeline-cert.pem",
        tmp_path / "exprsn-timeline-key.pem",
    )
    assert cert_paths(tmp_path, "exprsn-ca") == (tmp_path / "exprsn-ca-cert.pem", tmp_path / "exprsn-ca-key.pem")
    assert cert_paths(tmp_path, "ca") == (tmp_path / "ca-cert.pem", tmp_path / "ca-key.pem")
    assert cert_paths(str(tmp_path), "localhost") == (tmp_path / "localhost-cert.pem", tmp_path / "localhost-key.pem")


# --------------------------------------------------------------------------- #
# Lookup
# --------------------------------------------------------------------------- #


def test_find_certificate_order(workdir: Path) -> None:
    own = (workdir / "exprsn-timeline-cert.pem", workdir / "exprsn-timeline-key.pem")
    fallback = (workdir / "localhost-cert.pem", workdir / "localhost-key.pem")
    assert find_certificate(workdir, "timeline") == own
    assert find_certificate(workdir, "exprsn-timeline") == own
    assert find_certificate(workdir, "not-generated") == fallback
    assert find_certificate(workdir, "localhost") == fallback
    (workdir / "exprsn-timeline-key.pem").unlink()  # incomplete pair → fallback
    assert find_certificate(workdir, "timeline") == fallback
    (workdir / "localhost-cert.pem").unlink()
    assert find_certificate(workdir, "timeline") is None
    with pytest.raises(CertificateError):
        find_certificate(workdir, "ca")


def test_find_certificate_empty_or_missing_dir(tmp_path: Path) -> None:
    assert find_certificate(tmp_path, "timeline") is None
    assert find_certificate(tmp_path / "missing", "timeline") is None


# --------------------------------------------------------------------------- #
# Info
# --------------------------------------------------------------------------- #


def test_certificate_info(certs_dir: Path) -> None:
    path = certs_dir / "exprsn-timeline-cert.pem"
    cert = _cert(path)
    info = certificate_info(path)
    assert info.path == path
    assert info.subject == {
        "commonName": "exprsn-timeline",
        "countryName": "US",
        "stateOrProvinceName": "California",
        "localityName": "San Francisco",
        "organizationName": "Exprsn IO",
        "organizationalUnitName": "exprsn-timeline",
    }
    assert info.issuer["commonName"] == "Exprsn Root CA"
    assert info.issuer["organizationalUnitName"] == "Certificate Authority"
    assert info.valid_from == cert.not_valid_before_utc
    assert info.valid_to == cert.not_valid_after_utc
    assert info.valid_to.tzinfo is not None and info.valid_to.utcoffset() == dt.timedelta(0)
    assert int(info.serial_number, 16) == cert.serial_number
    assert re.fullmatch(r"(?:[0-9a-f]{2})+", info.serial_number)
    assert info.sans == ["localhost", "*.localhost", "127.0.0.1", "::1", "exprsn-timeline"]
    assert info.days_left in (729, 730)
    assert info.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert info.is_ca is False
    assert certificate_info(certs_dir / "ca-cert.pem").is_ca is True


def test_certificate_info_to_dict(certs_dir: Path) -> None:
    info = certificate_info(certs_dir / "exprsn-timeline-cert.pem")
    data = info.to_dict()
    assert list(data) == ["subject", "issuer", "validFrom", "validTo", "serialNumber"]
    assert data["subject"] == {
        "commonName": "exprsn-timeline",
        "countryName": "US",
        "ST": "California",
        "localityName": "San Francisco",
        "organizationName": "Exprsn IO",
        "OU": "exprsn-timeline",
    }
    assert data["issuer"]["OU"] == "Certificate Authority"
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(iso, data["validFrom"]) and re.fullmatch(iso, data["validTo"])
    parsed = dt.datetime.fromisoformat(data["validTo"].replace("Z", "+00:00"))
    assert parsed == info.valid_to
    assert data["serialNumber"] == info.serial_number


def test_certificate_info_errors(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="not found"):
        certificate_info(tmp_path / "nope.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        certificate_info(bad)
    assert isinstance(CertificateError("x"), OSError)


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["ca", "localhost", "timeline", "exprsn-svr"])
def test_verify_ok(certs_dir: Path, name: str) -> None:
    result = verify_certificate(certs_dir, name)
    assert result.ok, result.problems
    assert result.problems == ()
    assert result.warning is None
    assert result.days_left is not None and result.days_left > 700
    assert result.to_dict()["ok"] is True


def test_verify_expired(certs_dir: Path) -> None:
    later = _now() + 800 * DAY
    result = verify_certificate(certs_dir, "timeline", at=later)
    assert not result.ok
    assert any("expired" in p for p in result.problems)
    assert result.days_left is not None and result.days_left < 0
    assert verify_certificate(certs_dir, "ca", at=later).ok
    earlier = _now() - DAY
    assert any("not valid before" in p for p in verify_certificate(certs_dir, "timeline", at=earlier).problems)


def test_verify_foreign_ca(workdir: Path, other_dir: Path) -> None:
    for suffix in ("cert", "key"):
        shutil.copy(other_dir / f"exprsn-timeline-{suffix}.pem", workdir / f"exprsn-timeline-{suffix}.pem")
    result = verify_certificate(workdir, "timeline")
    assert not result.ok
    assert len(result.problems) == 1
    assert "does not chain" in result.problems[0]
    assert "signature" in result.problems[0]


def test_verify_key_mismatch_and_wrong_name(workdir: Path) -> None:
    shutil.copy(workdir / "exprsn-auth-key.pem", workdir / "exprsn-timeline-key.pem")
    result = verify_certificate(workdir, "timeline")
    assert not result.ok
    assert any("does not match" in p for p in result.problems)
    shutil.copy(workdir / "exprsn-auth-cert.pem", workdir / "exprsn-timeline-cert.pem")
    result = verify_certificate(workdir, "timeline")
    assert any("common name" in p for p in result.problems)
    assert any("DNS:exprsn-timeline" in p for p in result.problems)
    assert not any("does not match" in p for p in result.problems)


def test_verify_missing(tmp_path: Path) -> None:
    result = verify_certificate(tmp_path, "timeline")
    assert not result.ok
    assert result.days_left is None
    assert "not found" in result.problems[0]


def test_verify_missing_ca(workdir: Path) -> None:
    (workdir / "ca-cert.pem").unlink()
    result = verify_certificate(workdir, "timeline")
    assert not result.ok
    assert any("cannot check the chain" in p for p in result.problems)


def test_verify_all(workdir: Path) -> None:
    (workdir / "stray-cert.pem").write_text("junk")
    results = verify_all(workdir)
    names = [r.name for r in results]
    assert names[:2] == ["ca", "localhost"]
    assert names[2:] == sorted([*KNOWN_SERVICES, "stray"])
    assert all(r.ok for r in results if r.name != "stray")
    stray = next(r for r in results if r.name == "stray")
    assert not stray.ok
    with pytest.raises(CertificateError):
        verify_all(workdir / "missing")


# --------------------------------------------------------------------------- #
# Console output
# --------------------------------------------------------------------------- #


def test_format_report(report: GenerationReport, certs_dir: Path) -> None:
    lines = format_report(report)
    assert lines[0] == "🔐 Generating TLS certificates for Exprsn services..."
    assert any(line.startswith("📜 Root CA created") for line in lines)
    assert any(line.startswith("🔑 Shared localhost certificate created") for line in lines)
    assert "🔐 Service certificates:" in lines
    assert "  ✓ exprsn-timeline (port 3004)" in lines
    assert "  ✓ exprsn-svr (port 5001)" in lines
    assert not any("[kept]" in line for line in lines)
    assert "✅ All TLS certificates generated successfully!" in lines
    assert f"📂 Certificates location: {certs_dir}" in lines
    assert lines[-1].startswith("⚠️  These are development certificates")
    assert "Do NOT use them in production!" in lines[-1]


def test_report_records_are_frozen(report: GenerationReport) -> None:
    record: CertificateRecord = report.ca
    with pytest.raises(AttributeError):
        record.action = "kept"  # type: ignore[misc]
    with pytest.raises(KeyError):
        report.get("not-there")


# --------------------------------------------------------------------------- #
# Real TLS handshakes
# --------------------------------------------------------------------------- #


def _handshake(cert: Path, key: Path, trust: Path, server_hostname: str) -> dict[str, str]:
    """Serve one TLS connection with ``cert``/``key``; connect trusting only ``trust``."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    errors: list[BaseException] = []

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:  # the failing-client case lands here
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trust))
            client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
            assert client_ctx.check_hostname
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                assert tls.recv(2) == b"ok"
                peer = tls.getpeercert()
                assert peer is not None
                subject: dict[str, str] = {}
                for rdn in peer["subject"]:
                    for pair in rdn:
                        subject[str(pair[0])] = str(pair[1])
                return subject
        finally:
            thread.join(10)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "exprsn-timeline"])
def test_tls_handshake_succeeds(certs_dir: Path, hostname: str) -> None:
    cert, key = cert_paths(certs_dir, "timeline")
    subject = _handshake(cert, key, certs_dir / "ca-cert.pem", hostname)
    assert subject["commonName"] == "exprsn-timeline"
    assert subject["organizationalUnitName"] == "exprsn-timeline"


def test_tls_handshake_with_fallback(certs_dir: Path) -> None:
    found = find_certificate(certs_dir, "not-generated")
    assert found is not None
    subject = _handshake(*found, certs_dir / "ca-cert.pem", "localhost")
    assert subject["commonName"] == "localhost"


def test_tls_handshake_fails_with_other_ca(certs_dir: Path, other_dir: Path) -> None:
    cert, key = cert_paths(certs_dir, "timeline")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, key, other_dir / "ca-cert.pem", "localhost")


def test_tls_handshake_fails_for_wrong_hostname(certs_dir: Path) -> None:
    cert, key = cert_paths(certs_dir, "timeline")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)hostname"):
        _handshake(cert, key, certs_dir / "ca-cert.pem", "exprsn-auth")
