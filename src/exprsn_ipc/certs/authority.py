"""Development TLS certificates: a local root CA and one leaf per service.

This replaces the original ``node scripts/generate-tls-certs.js``. The files
keep the original's names, so Node services that read them keep working:

* ``ca-cert.pem`` / ``ca-key.pem`` -- the local root CA;
* ``localhost-cert.pem`` / ``localhost-key.pem`` -- the shared fallback;
* ``exprsn-<service>-cert.pem`` / ``exprsn-<service>-key.pem`` -- one pair per
  service.

Unlike the original, an existing CA is kept (so browsers and trust stores that
already trust it keep doing so), leaves that are still good are kept, keys are
written ``0600`` in PKCS#8, every write is atomic, serials are 159-bit random
numbers and the extensions are marked critical where RFC 5280 says so. See
docs/certificates.md.

This module generates and writes certificates; inspection and verification
live in :mod:`exprsn_ipc.certs.check` and the shared file layout and loading
in ``exprsn_ipc.certs.files``. Everything is re-exported here, so
``exprsn_ipc.certs.authority`` stays the one public import path.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import NameOID

from exprsn_ipc.certs.builder import build_ca, build_leaf, new_key
from exprsn_ipc.certs.check import CertificateInfo, VerificationResult, certificate_info, verify_all, verify_certificate
from exprsn_ipc.certs.files import (
    CA_NAME,
    LOCALHOST_NAME,
    RENEW_BEFORE_DAYS,
    cert_paths,
    chains_to,
    dns_sans,
    find_certificate,
    is_ca_cert,
    key_matches,
    load_ca,
    load_cert,
    load_key,
    normalize_service_name,
    stem_for,
    utc_now,
)
from exprsn_ipc.errors import CertificateError
from exprsn_ipc.protocol.constants import KNOWN_SERVICES

__all__ = [
    "CA_NAME",
    "DEFAULT_CA_DAYS",
    "DEFAULT_KEY_SIZE",
    "DEFAULT_LEAF_DAYS",
    "KNOWN_SERVICES",
    "LOCALHOST_NAME",
    "MIN_KEY_SIZE",
    "RENEW_BEFORE_DAYS",
    "Action",
    "CertificateInfo",
    "CertificateRecord",
    "GenerationReport",
    "VerificationResult",
    "cert_paths",
    "certificate_info",
    "find_certificate",
    "format_report",
    "generate_certificates",
    "load_ca",
    "normalize_service_name",
    "verify_all",
    "verify_certificate",
]

#: What :func:`generate_certificates` did with one certificate.
Action = Literal["created", "kept", "renewed"]

DEFAULT_CA_DAYS: Final = 3650
DEFAULT_LEAF_DAYS: Final = 730
DEFAULT_KEY_SIZE: Final = 2048
#: Smallest RSA key size accepted (``cryptography`` refuses anything smaller).
MIN_KEY_SIZE: Final = 1024
_CERT_MODE: Final = 0o644
_KEY_MODE: Final = 0o600
_DIR_MODE: Final = 0o755


# --------------------------------------------------------------------------- #
# Result types
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """One certificate handled by :func:`generate_certificates`.

    ``name`` is ``"ca"``, ``"localhost"`` or the full service name
    (``"exprsn-timeline"``); ``port`` is the service's known port, if any.
    """

    name: str
    cert_path: Path
    key_path: Path
    port: int | None
    action: Action
    not_after: _dt.datetime


@dataclass(frozen=True, slots=True)
class GenerationReport:
    """Everything :func:`generate_certificates` wrote or kept."""

    certs_dir: Path
    ca: CertificateRecord
    localhost: CertificateRecord
    services: tuple[CertificateRecord, ...]

    @property
    def certificates(self) -> tuple[CertificateRecord, ...]:
        """The CA, the shared localhost certificate, then every service."""
        return (self.ca, self.localhost, *self.services)

    def get(self, name: str) -> CertificateRecord:
        """The record for ``name`` (``"ca"``, ``"localhost"``, ``"timeline"``, ...)."""
        stem = stem_for(name)
        for record in self.certificates:
            if record.name == stem:
                return record
        raise KeyError(name)


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temp file in the same dir + ``os.replace``.

    The temp file is created ``0600`` (``mkstemp``) and chmod-ed to ``mode``
    before any data is written, so a private key is never readable by others,
    not even briefly, and an existing file with looser permissions is replaced
    rather than rewritten in place.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        _atomic_write(key_path, key_pem, _KEY_MODE)
        _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    except OSError as exc:
        raise CertificateError(f"cannot write {cert_path.name}/{key_path.name}: {exc}") from exc


# --------------------------------------------------------------------------- #
# Generation
# --------------------------------------------------------------------------- #


def _check_positive(label: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CertificateError(f"{label} must be a positive integer, got {value!r}")


def _service_list(only: Iterable[str] | None, extra_services: Iterable[str]) -> list[str]:
    if isinstance(extra_services, str) or isinstance(only, str):
        raise CertificateError("service lists must be iterables of names, not a string")
    base = list(KNOWN_SERVICES) if only is None else [normalize_service_name(s) for s in only]
    extra = [normalize_service_name(s) for s in extra_services]
    return list(dict.fromkeys((*base, *extra)))


def _names_service(cert: x509.Certificate, name: str) -> bool:
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common or common[0].value != name:
        return False
    return name in dns_sans(cert)


def _leaf_is_reusable(
    name: str,
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    now: _dt.datetime,
) -> x509.Certificate | None:
    """The existing leaf if it can be kept, else ``None``."""
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        cert = load_cert(cert_path)
        key = load_key(key_path)
    except CertificateError:
        return None
    if not key_matches(cert, key) or is_ca_cert(cert):
        return None
    if cert.not_valid_before_utc > now:
        return None
    if cert.not_valid_after_utc - now <= _dt.timedelta(days=RENEW_BEFORE_DAYS):
        return None
    if chains_to(cert, ca_cert) is not None:
        return None
    if not _names_service(cert, name):
        return None
    return cert


def _prepare_ca(
    directory: Path, *, force: bool, ca_days: int, key_size: int, now: _dt.datetime
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes, CertificateRecord]:
    cert_path, key_path = cert_paths(directory, CA_NAME)
    existed = cert_path.exists() or key_path.exists()
    if existed and not force:
        try:
            ca_cert, ca_key = load_ca(directory)
        except CertificateError as exc:
            raise CertificateError(
                f"existing root CA cannot be used ({exc}); run with --force (force=True) "
                "to regenerate it, which also reissues every certificate"
            ) from exc
        left = ca_cert.not_valid_after_utc - now
        if left <= _dt.timedelta(days=RENEW_BEFORE_DAYS):
            state = "has expired" if left.total_seconds() <= 0 else f"expires in {left.days} days"
            raise CertificateError(
                f"the root CA {cert_path} {state}; run with --force (force=True) to "
                "rotate it, then trust the new ca-cert.pem"
            )
        record = CertificateRecord(CA_NAME, cert_path, key_path, None, "kept", ca_cert.not_valid_after_utc)
        return ca_cert, ca_key, record
    fresh_key = new_key(key_size)
    ca_cert = build_ca(fresh_key, ca_days, now)
    _write_pair(cert_path, key_path, ca_cert, fresh_key)
    action: Action = "renewed" if existed else "created"
    record = CertificateRecord(CA_NAME, cert_path, key_path, None, action, ca_cert.not_valid_after_utc)
    return ca_cert, fresh_key, record


def _issue_leaf(
    directory: Path,
    name: str,
    port: int | None,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    *,
    force: bool,
    leaf_days: int,
    key_size: int,
    now: _dt.datetime,
) -> CertificateRecord:
    cert_path, key_path = cert_paths(directory, name)
    if not force:
        kept = _leaf_is_reusable(name, cert_path, key_path, ca_cert, now)
        if kept is not None:
            return CertificateRecord(name, cert_path, key_path, port, "kept", kept.not_valid_after_utc)
    existed = cert_path.exists() or key_path.exists()
    key = new_key(key_size)
    cert = build_leaf(name, key, ca_cert, ca_key, leaf_days, now)
    _write_pair(cert_path, key_path, cert, key)
    action: Action = "renewed" if existed else "created"
    return CertificateRecord(name, cert_path, key_path, port, action, cert.not_valid_after_utc)


def generate_certificates(
    certs_dir: Path | str,
    *,
    extra_services: Iterable[str] = (),
    only: Iterable[str] | None = None,
    force: bool = False,
    ca_days: int = DEFAULT_CA_DAYS,
    leaf_days: int = DEFAULT_LEAF_DAYS,
    key_size: int = DEFAULT_KEY_SIZE,
) -> GenerationReport:
    """Create (or refresh) the root CA, the shared localhost pair and service pairs.

    Services: all of :data:`KNOWN_SERVICES` by default; ``only`` replaces
    that list, ``extra_services`` adds to it (either way names without the
    ``exprsn-`` prefix get it, and bad names raise :class:`CertificateError`
    before anything is written). The CA and ``localhost`` pair are always
    handled.

    Without ``force`` an existing, loadable CA is kept and each leaf that
    chains to it, matches its key, names its service and has more than
    :data:`RENEW_BEFORE_DAYS` days left is kept too; other leaves are
    (re)issued. An unusable or nearly expired CA raises
    :class:`CertificateError` asking for ``force``. With ``force`` the CA and
    every selected leaf are regenerated (leaves *not* selected that were
    signed by the old CA stay on disk and no longer verify).
    """
    _check_positive("ca_days", ca_days)
    _check_positive("leaf_days", leaf_days)
    _check_positive("key_size", key_size)
    if key_size < MIN_KEY_SIZE:
        raise CertificateError(f"key_size must be at least {MIN_KEY_SIZE}, got {key_size}")
    names = _service_list(only, extra_services)

    directory = Path(certs_dir)
    try:
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create certificates directory {directory}: {exc}") from exc
    if not directory.is_dir():
        raise CertificateError(f"{directory} is not a directory")

    now = utc_now()
    ca_cert, ca_key, ca_record = _prepare_ca(directory, force=force, ca_days=ca_days, key_size=key_size, now=now)
    records = [
        _issue_leaf(
            directory,
            name,
            KNOWN_SERVICES.get(name),
            ca_cert,
            ca_key,
            force=force,
            leaf_days=leaf_days,
            key_size=key_size,
            now=now,
        )
        for name in (LOCALHOST_NAME, *names)
    ]
    localhost, *services = records
    return GenerationReport(directory, ca_record, localhost, tuple(services))


# --------------------------------------------------------------------------- #
# Console output
# --------------------------------------------------------------------------- #


_ACTION_WORDS: Final[dict[str, str]] = {
    "created": "created",
    "kept": "kept (existing)",
    "renewed": "regenerated",
}


def format_report(report: GenerationReport) -> list[str]:
    """Console lines in the style of the original script (the CLI prints them)."""
    ca = report.ca
    lines = [
        "🔐 Generating TLS certificates for Exprsn services...",
        "",
        f"📜 Root CA {_ACTION_WORDS[ca.action]}: {ca.cert_path.name} (valid until {ca.not_after.date().isoformat()})",
    ]
    if ca.action != "kept":
        lines.append(
            f"   Trust {ca.cert_path} in your browser/OS (or NODE_EXTRA_CA_CERTS / SSL_CERT_FILE) to avoid warnings."
        )
    shared = report.localhost
    lines += [
        f"🔑 Shared localhost certificate {_ACTION_WORDS[shared.action]}: "
        f"{shared.cert_path.name} (valid until {shared.not_after.date().isoformat()})",
        "",
        "🔐 Service certificates:",
    ]
    for record in report.services:
        line = f"  ✓ {record.name}"
        if record.port is not None:
            line += f" (port {record.port})"
        if record.action != "created":
            line += f" [{record.action}]"
        lines.append(line)
    lines += [
        "",
        "✅ All TLS certificates generated successfully!",
        f"📂 Certificates location: {report.certs_dir}",
        "",
        "⚠️  These are development certificates from a local root CA. Do NOT use them in production!",
    ]
    return lines
