"""``exprsn-ipc certs issue/list/revoke``: service credentials from the command line (issue 14)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exprsn_ipc.certs.authority import generate_certificates
from exprsn_ipc.certs.credentials import TrustStore, credential_paths, load_credential
from exprsn_ipc.cli import app

pytestmark = pytest.mark.timeout(60)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_issue_list_revoke_and_replace(tmp_path: Path) -> None:
    generate_certificates(tmp_path, only=[])
    code, out = _run("certs", "issue", "timeline", "--dir", str(tmp_path), "--days", "30")
    assert code == 0 and "issued exprsn-timeline credential" in out, out
    cert, key = credential_paths(tmp_path, "timeline")
    assert cert.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = load_credential(key)
    assert first.service == "exprsn-timeline"

    # A second credential for the same service needs --replace (which revokes the first).
    code, out = _run("certs", "issue", "timeline", "--dir", str(tmp_path))
    assert code == 1 and "--replace" in out
    code, out = _run("certs", "issue", "timeline", "--dir", str(tmp_path), "--replace")
    assert code == 0
    assert first.serial in TrustStore(tmp_path).revoked

    code, out = _run("certs", "list", "--dir", str(tmp_path))
    assert code == 0 and "exprsn-timeline" in out and "valid" in out
    code, out = _run("certs", "revoke", "timeline", "--dir", str(tmp_path))
    assert code == 0 and "revoked exprsn-timeline" in out
    code, out = _run("certs", "list", "--dir", str(tmp_path))
    assert "revoked" in out and "valid" not in out.replace("revoked", "")
    code, out = _run("certs", "revoke", "nobody", "--dir", str(tmp_path))
    assert code == 1 and "certs list" in out


def test_issue_without_a_ca_names_the_next_step(tmp_path: Path) -> None:
    code, out = _run("certs", "issue", "timeline", "--dir", str(tmp_path))
    assert code == 1 and "certs generate" in out
    code, out = _run("certs", "list", "--dir", str(tmp_path))
    assert code == 0 and "certs issue" in out


def test_a_revocation_list_not_signed_by_the_ca_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    for folder in (tmp_path, other):
        generate_certificates(folder, only=[])
        _run("certs", "issue", "timeline", "--dir", str(folder))
    _run("certs", "revoke", "timeline", "--dir", str(other))
    crl = other / "credentials" / "revoked.crl"
    (tmp_path / "credentials" / "revoked.crl").write_bytes(crl.read_bytes())
    from exprsn_ipc.errors import CertificateError

    with pytest.raises(CertificateError, match="not signed by the root CA"):
        TrustStore(tmp_path)
