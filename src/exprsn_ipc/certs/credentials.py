"""Service credentials: one Ed25519 key per service, certified by the local root CA.

A credential is what lets a service speak on the bus as itself and as nobody
else: the Bridge admits a worker for ``exprsn-timeline`` only with a handshake
token signed by ``exprsn-timeline``'s key (``certs/handshake.py``), whose
certificate the root CA issued for that name. The files live in
``<CERTS_DIR>/credentials/``:

- ``<service>.key``: the private key (mode 0600), only on the service's hosts;
- ``<service>.crt``: its certificate (public): CN = the service, a URI SAN
  ``urn:exprsn-ipc:service:<service>``, extended key usage clientAuth only;
- ``revoked.crl``: the revocation list, signed by the CA, that every Bridge
  re-reads when it changes (live connections of a revoked credential are closed).

:class:`TrustStore` is the verifying half, used by the Bridge and by workers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exprsn_ipc.certs.authority import _atomic_write
from exprsn_ipc.certs.builder import BACKDATE, leaf_key_usage
from exprsn_ipc.certs.files import CA_NAME, cert_paths, chains_to, load_ca, load_cert, normalize_service_name, utc_now
from exprsn_ipc.errors import (
    CertificateError,
    CredentialExpiredError,
    CredentialMismatchError,
    CredentialRevokedError,
    CredentialUntrustedError,
)

__all__ = [
    "CREDENTIALS_DIR",
    "DEFAULT_CREDENTIAL_DAYS",
    "Credential",
    "CredentialRecord",
    "TrustStore",
    "credential_paths",
    "issue_credential",
    "list_credentials",
    "load_credential",
    "revoke_credential",
]

#: The credentials' folder inside CERTS_DIR.
CREDENTIALS_DIR: Final = "credentials"
CRL_NAME: Final = "revoked.crl"
DEFAULT_CREDENTIAL_DAYS: Final = 90
_URI_PREFIX: Final = "urn:exprsn-ipc:service:"
_UNIT: Final = "exprsn-ipc service credential"


@dataclass(frozen=True, slots=True)
class Credential:
    """A service's own key and certificate, as a worker loads them to sign its handshake."""

    service: str
    key: ed25519.Ed25519PrivateKey
    certificate: x509.Certificate

    @property
    def serial(self) -> int:
        return self.certificate.serial_number


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """One issued credential as ``certs list`` shows it."""

    service: str
    serial: int
    not_after: _dt.datetime
    status: str  # "valid", "expired" or "revoked"
    cert_path: Path

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"


def credential_paths(certs_dir: Path | str, service: str) -> tuple[Path, Path]:
    """``(certificate, key)`` paths of ``service``'s credential."""
    name = normalize_service_name(service)
    folder = Path(certs_dir) / CREDENTIALS_DIR
    return folder / f"{name}.crt", folder / f"{name}.key"


def service_of(cert: x509.Certificate) -> str | None:
    """The service a credential certificate names (its URI SAN), or None if it is no credential."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(_URI_PREFIX):
            return uri[len(_URI_PREFIX) :]
    return None


def _build(
    service: str,
    key: ed25519.Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    days: int,
) -> x509.Certificate:
    now = utc_now()
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, service), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _UNIT)]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_key_usage(key_encipherment=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(_URI_PREFIX + service)]), critical=False
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def issue_credential(
    certs_dir: Path | str, service: str, *, days: int = DEFAULT_CREDENTIAL_DAYS, replace: bool = False
) -> CredentialRecord:
    """Issue ``service`` a new credential signed by the root CA in ``certs_dir``.

    Raises:
        CertificateError: no CA (run ``exprsn-ipc certs generate``), a bad ``days``, or the
            service already holds a valid credential and ``replace`` is not set (with
            ``replace`` the old one is revoked first).
    """
    if days < 1:
        raise CertificateError(f"--days must be at least 1 (got {days})")
    name = normalize_service_name(service)
    try:
        ca_cert, ca_key = load_ca(certs_dir)
    except CertificateError as exc:
        raise CertificateError(f"{exc} (the root CA comes from `exprsn-ipc certs generate`)") from None
    cert_path, key_path = credential_paths(certs_dir, name)
    if cert_path.is_file():
        old = load_cert(cert_path)
        store = TrustStore(certs_dir)
        if store.status(old) == "valid":
            if not replace:
                raise CertificateError(
                    f"{name} already has a valid credential (serial {old.serial_number:x}); "
                    "pass --replace to revoke it and issue a new one"
                )
            revoke_credential(certs_dir, name)
    key = ed25519.Ed25519PrivateKey.generate()
    cert = _build(name, key, ca_cert, ca_key, days)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _atomic_write(key_path, key_pem, 0o600)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CredentialRecord(name, cert.serial_number, cert.not_valid_after_utc, "valid", cert_path)


def list_credentials(certs_dir: Path | str) -> list[CredentialRecord]:
    """Every credential certificate in ``certs_dir/credentials``, with its status."""
    store = TrustStore(certs_dir)
    return [
        CredentialRecord(
            service_of(cert) or path.stem, cert.serial_number, cert.not_valid_after_utc, store.status(cert), path
        )
        for path, cert in store.certificates
    ]


def revoke_credential(certs_dir: Path | str, service_or_serial: str) -> CredentialRecord:
    """Add a credential (by service name or hexadecimal serial) to the CA-signed revocation list.

    Running Bridges re-read the list within ``IPC_CREDENTIAL_RECHECK`` seconds and
    close the live connections that used it.

    Raises:
        CertificateError: no such credential, or no CA to sign the list.
    """
    records = list_credentials(certs_dir)
    wanted = service_or_serial.lower().removeprefix("0x")
    match = [r for r in records if r.serial_hex == wanted]
    if not match:
        try:
            name = normalize_service_name(service_or_serial)
        except CertificateError:
            name = service_or_serial
        match = [r for r in records if r.service == name]
    if not match:
        raise CertificateError(
            f"no credential {service_or_serial!r} in {Path(certs_dir) / CREDENTIALS_DIR} (see `exprsn-ipc certs list`)"
        )
    record = match[0]
    ca_cert, ca_key = load_ca(certs_dir)
    crl_path = Path(certs_dir) / CREDENTIALS_DIR / CRL_NAME
    now = utc_now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + _dt.timedelta(days=3650))
    )
    revoked = {record.serial}
    for entry in _read_crl(crl_path, ca_cert):
        revoked.add(entry)
    for serial in sorted(revoked):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    _atomic_write(crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return CredentialRecord(record.service, record.serial, record.not_after, "revoked", record.cert_path)


def _read_crl(path: Path, ca_cert: x509.Certificate) -> set[int]:
    """The serials of the revocation list at ``path``; a list the CA did not sign is refused."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read the revocation list {path}: {exc}") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise CertificateError(f"{path} is not signed by the root CA: refusing it")
    return {entry.serial_number for entry in crl}


def load_credential(key_path: Path | str) -> Credential:
    """Load a service's credential from its key file (the certificate is ``<same name>.crt``).

    Raises:
        CertificateError: a file is missing, the key is no Ed25519 key, or it does not
            match the certificate.
    """
    key_path = Path(key_path)
    cert_path = key_path.with_suffix(".crt")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"cannot read the credential key {key_path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CertificateError(f"{key_path} is no Ed25519 key (issue one with `exprsn-ipc certs issue`)")
    cert = load_cert(cert_path)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise CertificateError(f"{key_path} does not match {cert_path}")
    service = service_of(cert)
    if service is None:
        raise CertificateError(f"{cert_path} is no service credential (issue one with `exprsn-ipc certs issue`)")
    return Credential(service, key, cert)


class TrustStore:
    """The root CA and the revocation list of one CERTS_DIR, re-read when they change.

    ``verify`` answers whether a credential certificate may speak for a service;
    ``credentialed`` lists the services that hold a valid credential here (they can
    no longer be spoken for with the shared key).
    """

    def __init__(self, certs_dir: Path | str) -> None:
        self.certs_dir = Path(certs_dir)
        self._ca_path = cert_paths(self.certs_dir, CA_NAME)[0]
        self._crl_path = self.certs_dir / CREDENTIALS_DIR / CRL_NAME
        self._stamp: tuple[float, float] | None = None
        self._ca: x509.Certificate | None = None
        self.revoked: frozenset[int] = frozenset()
        self._credentialed: frozenset[str] = frozenset()
        #: The certificates in ``credentials/`` as last read, with their files.
        self.certificates: list[tuple[Path, x509.Certificate]] = []
        self._by_path: dict[Path, x509.Certificate] = {}
        self.refresh()

    def _mtimes(self) -> tuple[float, float]:
        def mtime(path: Path) -> float:
            try:
                return os.stat(path).st_mtime_ns / 1e9
            except OSError:
                return -1.0

        return mtime(self._ca_path), max(mtime(self._crl_path), mtime(self._crl_path.parent))

    def refresh(self) -> frozenset[int]:
        """Re-read the CA and the revocation list if their files changed; the newly revoked serials."""
        stamp = self._mtimes()
        if stamp == self._stamp:
            return frozenset()
        self._stamp = stamp
        try:
            self._ca = load_cert(self._ca_path)
        except CertificateError:
            self._ca = None
        before = self.revoked
        self.revoked = frozenset(_read_crl(self._crl_path, self._ca)) if self._ca is not None else frozenset()
        self.certificates = []
        for path in sorted((self.certs_dir / CREDENTIALS_DIR).glob("*.crt")):
            with contextlib.suppress(CertificateError):
                self.certificates.append((path, load_cert(path)))
        self._by_path = dict(self.certificates)
        self._credentialed = frozenset(
            service
            for _, cert in self.certificates
            if (service := service_of(cert)) is not None and self.status(cert) == "valid"
        )
        return self.revoked - before

    def certificate(self, service: str) -> x509.Certificate | None:
        """The credential certificate of ``service`` here (``credentials/<service>.crt``), if any."""
        try:
            wanted = credential_paths(self.certs_dir, service)[0]
        except CertificateError:
            return None  # not a service name, so no file of one
        return self._by_path.get(wanted)

    @property
    def has_ca(self) -> bool:
        return self._ca is not None

    def credentialed(self) -> frozenset[str]:
        """Services holding a valid credential in this CERTS_DIR."""
        return self._credentialed

    def status(self, cert: x509.Certificate) -> str:
        if cert.serial_number in self.revoked:
            return "revoked"
        now = utc_now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return "expired"
        return "valid"

    def verify(self, cert: x509.Certificate, service: str) -> None:
        """Check that ``cert`` is a credential the root CA issued to ``service``, valid now.

        Raises:
            CredentialUntrustedError: not issued by this CA (or no CA here), or no credential at all.
            CredentialMismatchError: issued to another service.
            CredentialExpiredError: outside its validity.
            CredentialRevokedError: on the revocation list.
        """
        if self._ca is None:
            raise CredentialUntrustedError(f"no root CA to check credentials against ({self._ca_path})")
        reason = chains_to(cert, self._ca)
        if reason is not None:
            raise CredentialUntrustedError(f"the credential was not issued by this Bridge's root CA: {reason}")
        named = service_of(cert)
        if named is None:
            raise CredentialUntrustedError("the certificate is no service credential (no urn:exprsn-ipc SAN)")
        if named != service:
            raise CredentialMismatchError(f"the credential of {named} cannot speak for {service}")
        status = self.status(cert)
        if status == "revoked":
            raise CredentialRevokedError(f"the credential {cert.serial_number:x} of {service} was revoked")
        if status == "expired":
            raise CredentialExpiredError(
                f"the credential of {service} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
                f"(issue a new one: `exprsn-ipc certs issue {service} --replace`)"
            )
