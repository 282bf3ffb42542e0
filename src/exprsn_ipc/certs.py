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
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dh, dsa, ec, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .constants import KNOWN_SERVICES
from .errors import CertificateError

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

#: File stem (and :func:`verify_certificate` name) of the root CA.
CA_NAME: Final = "ca"
#: File stem, common name and :func:`verify_certificate` name of the shared fallback.
LOCALHOST_NAME: Final = "localhost"

DEFAULT_CA_DAYS: Final = 3650
DEFAULT_LEAF_DAYS: Final = 730
DEFAULT_KEY_SIZE: Final = 2048
#: Smallest RSA key size accepted (``cryptography`` refuses anything smaller).
MIN_KEY_SIZE: Final = 1024
#: A leaf with fewer days left than this is renewed, and verification warns.
RENEW_BEFORE_DAYS: Final = 30
#: ``not_valid_before`` is set this far in the past to tolerate clock skew.
BACKDATE: Final = _dt.timedelta(minutes=5)

#: The subject attributes every certificate shares with the CA (the original's).
_COUNTRY: Final = "US"
_STATE: Final = "California"
_LOCALITY: Final = "San Francisco"
_ORGANIZATION: Final = "Exprsn IO"
_CA_COMMON_NAME: Final = "Exprsn Root CA"
_CA_UNIT: Final = "Certificate Authority"
#: The original gave the shared certificate ``OU=shared``; kept for continuity.
_LOCALHOST_UNIT: Final = "shared"

#: SANs every leaf carries (the original's four), in this order.
_COMMON_DNS: Final = ("localhost", "*.localhost")
_COMMON_IPS: Final = ("127.0.0.1", "::1")

_SERVICE_PREFIX: Final = "exprsn-"
_NAME_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CERT_SUFFIX: Final = "-cert.pem"
_KEY_SUFFIX: Final = "-key.pem"
_CERT_MODE: Final = 0o644
_KEY_MODE: Final = 0o600
_DIR_MODE: Final = 0o755

#: (attribute OID, key in :attr:`CertificateInfo.subject`, key in the original's JSON).
_NAME_FIELDS: Final = (
    (NameOID.COMMON_NAME, "commonName", "commonName"),
    (NameOID.COUNTRY_NAME, "countryName", "countryName"),
    (NameOID.STATE_OR_PROVINCE_NAME, "stateOrProvinceName", "ST"),
    (NameOID.LOCALITY_NAME, "localityName", "localityName"),
    (NameOID.ORGANIZATION_NAME, "organizationName", "organizationName"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "organizationalUnitName", "OU"),
)


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
        stem = _stem_for(name)
        for record in self.certificates:
            if record.name == stem:
                return record
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What :func:`certificate_info` reads from a certificate file.

    ``subject``/``issuer`` only hold the attributes present, keyed
    ``commonName``, ``countryName``, ``stateOrProvinceName``, ``localityName``,
    ``organizationName``, ``organizationalUnitName``. ``serial_number`` is
    lowercase hex (even length), like node-forge's ``serialNumber``.
    ``days_left`` is whole days until ``valid_to`` (negative once expired),
    computed when the info was read.
    """

    path: Path
    subject: dict[str, str]
    issuer: dict[str, str]
    valid_from: _dt.datetime
    valid_to: _dt.datetime
    serial_number: str
    sans: list[str]
    days_left: int
    fingerprint_sha256: str
    is_ca: bool

    def to_dict(self) -> dict[str, Any]:
        """The original ``getCertificateInfo()`` JSON shape.

        ``{subject: {commonName, countryName, ST, localityName,
        organizationName, OU}, issuer: {...}, validFrom, validTo,
        serialNumber}`` with JavaScript ``Date#toISOString()`` timestamps.
        Attributes the certificate lacks are omitted, as ``JSON.stringify``
        omits ``undefined``.
        """
        return {
            "subject": _js_names(self.subject),
            "issuer": _js_names(self.issuer),
            "validFrom": _js_iso(self.valid_from),
            "validTo": _js_iso(self.valid_to),
            "serialNumber": self.serial_number,
        }


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """Outcome of :func:`verify_certificate`.

    ``ok`` is true when ``problems`` is empty. ``warning`` is set (and ``ok``
    may still be true) when fewer than :data:`RENEW_BEFORE_DAYS` days are left.
    ``days_left`` is ``None`` when the certificate could not be read.
    """

    name: str
    cert_path: Path
    key_path: Path
    ok: bool
    problems: tuple[str, ...] = ()
    days_left: int | None = None
    warning: str | None = None
    not_after: _dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (paths as strings, ``notAfter`` as ISO 8601)."""
        return {
            "name": self.name,
            "certPath": str(self.cert_path),
            "keyPath": str(self.key_path),
            "ok": self.ok,
            "problems": list(self.problems),
            "daysLeft": self.days_left,
            "warning": self.warning,
            "notAfter": None if self.not_after is None else _js_iso(self.not_after),
        }


# --------------------------------------------------------------------------- #
# Names and paths
# --------------------------------------------------------------------------- #


def normalize_service_name(name: str) -> str:
    """``timeline`` → ``exprsn-timeline``; validate the result.

    The full name must be a DNS label: lowercase letters, digits and hyphens,
    1-63 characters, not starting or ending with a hyphen. Raises
    :class:`CertificateError` otherwise.
    """
    if not isinstance(name, str):
        raise CertificateError(f"service name must be a string, got {type(name).__name__}")
    full = name if name.startswith(_SERVICE_PREFIX) else _SERVICE_PREFIX + name
    if _NAME_RE.fullmatch(name) is None or _NAME_RE.fullmatch(full) is None:
        raise CertificateError(
            f"invalid service name {name!r}: use lowercase letters, digits and hyphens "
            "(a DNS label of at most 63 characters including the 'exprsn-' prefix)"
        )
    return full


def _stem_for(name: str) -> str:
    """File stem for ``name``: ``ca``, ``localhost`` or ``exprsn-<service>``."""
    if name in (CA_NAME, LOCALHOST_NAME):
        return name
    return normalize_service_name(name)


def cert_paths(certs_dir: Path | str, service: str) -> tuple[Path, Path]:
    """``(cert_path, key_path)`` for ``service``; the files need not exist.

    ``service`` is a service name (``timeline`` or ``exprsn-timeline``), or
    ``"localhost"`` for the shared fallback, or ``"ca"`` for the root CA (the
    CA *service* is ``"exprsn-ca"``).
    """
    directory = Path(certs_dir)
    stem = _stem_for(service)
    return directory / f"{stem}{_CERT_SUFFIX}", directory / f"{stem}{_KEY_SUFFIX}"


def find_certificate(certs_dir: Path | str, service: str) -> tuple[Path, Path] | None:
    """The pair an HTTPS server for ``service`` should use, or ``None``.

    Looks for the service's own ``exprsn-<service>-cert.pem``/``-key.pem``
    first, then the shared ``localhost-cert.pem``/``localhost-key.pem``; a
    pair counts only if both files exist. The files are not parsed; use
    :func:`verify_certificate` for that.
    """
    if service == CA_NAME:
        raise CertificateError("the root CA is not a server certificate; the CA service is 'exprsn-ca'")
    for candidate in dict.fromkeys((_stem_for(service), LOCALHOST_NAME)):
        cert_path, key_path = cert_paths(certs_dir, candidate)
        if cert_path.is_file() and key_path.is_file():
            return cert_path, key_path
    return None


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _load_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"certificate not found: {path}") from None
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate: {exc}") from exc


def _load_key(path: Path) -> PrivateKeyTypes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"private key not found: {path}") from None
    except OSError as exc:
        raise CertificateError(f"cannot read private key {path}: {exc}") from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{path} is not an unencrypted PEM private key: {exc}") from exc


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _spki(cert.public_key()) == _spki(key.public_key())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def load_ca(
    certs_dir: Path | str,
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """Load and check ``ca-cert.pem`` and ``ca-key.pem``.

    Raises :class:`CertificateError` if either file is missing or unreadable,
    the key does not belong to the certificate, the certificate is not a CA,
    or the key type cannot sign certificates. Expiry is *not* checked here.
    """
    cert_path, key_path = cert_paths(certs_dir, CA_NAME)
    cert = _load_cert(cert_path)
    key = _load_key(key_path)
    if not _key_matches(cert, key):
        raise CertificateError(f"{key_path} does not match {cert_path}")
    if not _is_ca(cert):
        raise CertificateError(f"{cert_path} is not a CA certificate (basicConstraints CA=false)")
    if isinstance(key, dh.DHPrivateKey | x25519.X25519PrivateKey | x448.X448PrivateKey):
        raise CertificateError(f"{key_path}: a {type(key).__name__} cannot sign certificates")
    return cert, cast(CertificateIssuerPrivateKeyTypes, key)


def _signing_hash(key: object) -> hashes.SHA256 | None:
    """SHA-256 for RSA/EC/DSA keys; ``None`` for keys that hash internally (Ed25519...)."""
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey):
        return hashes.SHA256()
    return None


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
# Building certificates
# --------------------------------------------------------------------------- #


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.COUNTRY_NAME, _COUNTRY),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, _STATE),
            x509.NameAttribute(NameOID.LOCALITY_NAME, _LOCALITY),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
        ]
    )


def _new_key(key_size: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def _build_ca(key: rsa.RSAPrivateKey, days: int, now: _dt.datetime) -> x509.Certificate:
    name = _name(_CA_COMMON_NAME, _CA_UNIT)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def _build_leaf(
    name: str,
    key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    days: int,
    now: _dt.datetime,
) -> x509.Certificate:
    unit = _LOCALHOST_UNIT if name == LOCALHOST_NAME else name
    dns = list(dict.fromkeys((*_COMMON_DNS, name)))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns[: len(_COMMON_DNS)]]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _COMMON_IPS]
    sans += [x509.DNSName(d) for d in dns[len(_COMMON_DNS) :]]
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        issuer_public = cast(CertificateIssuerPublicKeyTypes, ca_cert.public_key())
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public)
    # A leaf must not outlive its issuer.
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name, unit))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(ca_key, _signing_hash(ca_key))


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
    return name in _dns_sans(cert)


def _dns_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ext.get_values_for_type(x509.DNSName)


def _chains_to(cert: x509.Certificate, ca_cert: x509.Certificate) -> str | None:
    """``None`` if ``cert`` is directly issued by ``ca_cert``, else the reason."""
    if cert.issuer != ca_cert.subject:
        return (
            f"issuer '{cert.issuer.rfc4514_string()}' does not match the CA subject "
            f"'{ca_cert.subject.rfc4514_string()}'"
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except InvalidSignature:
        return "signature does not verify with the CA public key (issued by a different CA)"
    except (ValueError, TypeError) as exc:
        return f"cannot verify against the CA: {exc}"
    return None


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
        cert = _load_cert(cert_path)
        key = _load_key(key_path)
    except CertificateError:
        return None
    if not _key_matches(cert, key) or _is_ca(cert):
        return None
    if cert.not_valid_before_utc > now:
        return None
    if cert.not_valid_after_utc - now <= _dt.timedelta(days=RENEW_BEFORE_DAYS):
        return None
    if _chains_to(cert, ca_cert) is not None:
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
    new_key = _new_key(key_size)
    ca_cert = _build_ca(new_key, ca_days, now)
    _write_pair(cert_path, key_path, ca_cert, new_key)
    action: Action = "renewed" if existed else "created"
    record = CertificateRecord(CA_NAME, cert_path, key_path, None, action, ca_cert.not_valid_after_utc)
    return ca_cert, new_key, record


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
    key = _new_key(key_size)
    cert = _build_leaf(name, key, ca_cert, ca_key, leaf_days, now)
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

    now = _now()
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
# Inspection
# --------------------------------------------------------------------------- #


def _name_dict(name: x509.Name) -> dict[str, str]:
    out: dict[str, str] = {}
    for oid, key, _ in _NAME_FIELDS:
        attrs = name.get_attributes_for_oid(oid)
        if attrs:
            value = attrs[0].value
            out[key] = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return out


def _js_names(names: dict[str, str]) -> dict[str, str]:
    return {js: names[key] for _, key, js in _NAME_FIELDS if key in names}


def _js_iso(moment: _dt.datetime) -> str:
    """JavaScript ``Date#toISOString()``: millisecond precision, ``Z`` suffix."""
    utc = moment.astimezone(_dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _serial_hex(serial: int) -> str:
    text = f"{serial:x}"
    return text if len(text) % 2 == 0 else "0" + text


def _days_left(not_after: _dt.datetime, now: _dt.datetime) -> int:
    return (not_after - now) // _dt.timedelta(days=1)


def _all_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for general in ext:
        value = general.value
        out.append(value if isinstance(value, str) else str(value))
    return out


def certificate_info(cert_path: Path | str) -> CertificateInfo:
    """Read a PEM certificate; raises :class:`CertificateError` if it cannot."""
    path = Path(cert_path)
    cert = _load_cert(path)
    return _info(path, cert, _now())


def _info(path: Path, cert: x509.Certificate, now: _dt.datetime) -> CertificateInfo:
    return CertificateInfo(
        path=path,
        subject=_name_dict(cert.subject),
        issuer=_name_dict(cert.issuer),
        valid_from=cert.not_valid_before_utc,
        valid_to=cert.not_valid_after_utc,
        serial_number=_serial_hex(cert.serial_number),
        sans=_all_sans(cert),
        days_left=_days_left(cert.not_valid_after_utc, now),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        is_ca=_is_ca(cert),
    )


def _verify_stem(directory: Path, stem: str, at: _dt.datetime | None) -> VerificationResult:
    cert_path = directory / f"{stem}{_CERT_SUFFIX}"
    key_path = directory / f"{stem}{_KEY_SUFFIX}"
    now = _now() if at is None else at.astimezone(_dt.UTC)
    problems: list[str] = []

    try:
        cert = _load_cert(cert_path)
    except CertificateError as exc:
        return VerificationResult(stem, cert_path, key_path, False, (str(exc),))

    try:
        key = _load_key(key_path)
    except CertificateError as exc:
        problems.append(str(exc))
    else:
        if not _key_matches(cert, key):
            problems.append(f"{key_path.name} does not match {cert_path.name}")

    if stem == CA_NAME:
        if not _is_ca(cert):
            problems.append("not a CA certificate (basicConstraints CA=false or missing)")
        reason = _chains_to(cert, cert)
        if reason is not None:
            problems.append(f"not a valid self-signed root: {reason}")
    else:
        try:
            ca_cert = _load_cert(directory / f"{CA_NAME}{_CERT_SUFFIX}")
        except CertificateError as exc:
            problems.append(f"cannot check the chain: {exc}")
        else:
            reason = _chains_to(cert, ca_cert)
            if reason is not None:
                problems.append(f"does not chain to {CA_NAME}{_CERT_SUFFIX}: {reason}")
        if _is_ca(cert):
            problems.append("leaf certificate is marked as a CA")
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = common[0].value if common else None
        if cn != stem:
            problems.append(f"common name is {cn!r}, expected {stem!r}")
        if stem not in _dns_sans(cert):
            problems.append(f"subjectAltName does not include DNS:{stem}")

    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    days_left = _days_left(not_after, now)
    warning: str | None = None
    if now < not_before:
        problems.append(f"not valid before {not_before.isoformat()}")
    if now >= not_after:
        problems.append(f"expired on {not_after.isoformat()}")
    elif not_after - now < _dt.timedelta(days=RENEW_BEFORE_DAYS):
        warning = (
            f"expires in {days_left} day{'s' if days_left != 1 else ''} "
            f"({not_after.date().isoformat()}); regenerate it soon"
        )
    return VerificationResult(stem, cert_path, key_path, not problems, tuple(problems), days_left, warning, not_after)


def verify_certificate(certs_dir: Path | str, service: str, *, at: _dt.datetime | None = None) -> VerificationResult:
    """Check one certificate in ``certs_dir``; never raises for a bad certificate.

    ``service`` is ``"ca"``, ``"localhost"`` or a service name (``timeline`` /
    ``exprsn-timeline``). Checks: the cert exists and parses, the key exists
    and matches, the cert is directly issued by ``ca-cert.pem`` (issuer name
    and signature; for the CA itself: self-signed and CA=true), it is within
    its validity period at ``at`` (default: now), and for leaves the CN and a
    DNS SAN name the service. Fewer than :data:`RENEW_BEFORE_DAYS` days left
    gives a ``warning``. Only an invalid service name raises
    (:class:`CertificateError`).
    """
    return _verify_stem(Path(certs_dir), _stem_for(service), at)


def verify_all(certs_dir: Path | str, *, at: _dt.datetime | None = None) -> list[VerificationResult]:
    """Verify every ``*-cert.pem`` in ``certs_dir``: CA first, then localhost, then by name.

    Raises :class:`CertificateError` if the directory does not exist.
    """
    directory = Path(certs_dir)
    if not directory.is_dir():
        raise CertificateError(f"certificates directory not found: {directory}")
    stems = {
        p.name[: -len(_CERT_SUFFIX)]
        for p in directory.glob(f"*{_CERT_SUFFIX}")
        if p.is_file() and len(p.name) > len(_CERT_SUFFIX) and not p.name.startswith(".")
    }
    order = {CA_NAME: 0, LOCALHOST_NAME: 1}
    ranked = sorted(stems, key=lambda s: (order.get(s, 2), s))
    return [_verify_stem(directory, stem, at) for stem in ranked]


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
