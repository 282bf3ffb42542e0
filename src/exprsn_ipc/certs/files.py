"""The certificates directory: file names, service names, loading and chain checks.

Shared by :mod:`exprsn_ipc.certs.authority` (generation) and :mod:`exprsn_ipc.certs.check`
(inspection and verification). The public names are re-exported by
:mod:`exprsn_ipc.certs.authority`, their public home.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Final, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes

from exprsn_ipc.errors import CertificateError

__all__ = [
    "CA_NAME",
    "CERT_SUFFIX",
    "KEY_SUFFIX",
    "LOCALHOST_NAME",
    "RENEW_BEFORE_DAYS",
    "cert_paths",
    "chains_to",
    "dns_sans",
    "find_certificate",
    "is_ca_cert",
    "key_matches",
    "load_ca",
    "load_cert",
    "load_key",
    "normalize_service_name",
    "stem_for",
    "utc_now",
]

#: File stem (and :func:`verify_certificate` name) of the root CA.
CA_NAME: Final = "ca"
#: File stem, common name and :func:`verify_certificate` name of the shared fallback.
LOCALHOST_NAME: Final = "localhost"

#: A leaf with fewer days left than this is renewed, and verification warns.
RENEW_BEFORE_DAYS: Final = 30

_SERVICE_PREFIX: Final = "exprsn-"
_NAME_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
CERT_SUFFIX: Final = "-cert.pem"
KEY_SUFFIX: Final = "-key.pem"


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


def stem_for(name: str) -> str:
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
    stem = stem_for(service)
    return directory / f"{stem}{CERT_SUFFIX}", directory / f"{stem}{KEY_SUFFIX}"


def find_certificate(certs_dir: Path | str, service: str) -> tuple[Path, Path] | None:
    """The pair an HTTPS server for ``service`` should use, or ``None``.

    Looks for the service's own ``exprsn-<service>-cert.pem``/``-key.pem``
    first, then the shared ``localhost-cert.pem``/``localhost-key.pem``; a
    pair counts only if both files exist. The files are not parsed; use
    :func:`verify_certificate` for that.
    """
    if service == CA_NAME:
        raise CertificateError("the root CA is not a server certificate; the CA service is 'exprsn-ca'")
    for candidate in dict.fromkeys((stem_for(service), LOCALHOST_NAME)):
        cert_path, key_path = cert_paths(certs_dir, candidate)
        if cert_path.is_file() and key_path.is_file():
            return cert_path, key_path
    return None


# --------------------------------------------------------------------------- #
# Loading and checking
# --------------------------------------------------------------------------- #


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def load_cert(path: Path) -> x509.Certificate:
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


def load_key(path: Path) -> PrivateKeyTypes:
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


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _spki(cert.public_key()) == _spki(key.public_key())


def is_ca_cert(cert: x509.Certificate) -> bool:
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
    cert = load_cert(cert_path)
    key = load_key(key_path)
    if not key_matches(cert, key):
        raise CertificateError(f"{key_path} does not match {cert_path}")
    if not is_ca_cert(cert):
        raise CertificateError(f"{cert_path} is not a CA certificate (basicConstraints CA=false)")
    # An allow-list of signing key types: naming the key-exchange types instead
    # would touch cryptography's deprecated finite-field DH module on every load.
    if not isinstance(key, _SIGNING_KEYS):
        raise CertificateError(f"{key_path}: a {type(key).__name__} cannot sign certificates")
    # Redundant for some cryptography releases, needed for others (their issuer-key unions differ).
    return cert, cast(CertificateIssuerPrivateKeyTypes, key)  # type: ignore[redundant-cast, unused-ignore]


_SIGNING_KEYS: Final = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


def dns_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ext.get_values_for_type(x509.DNSName)


def chains_to(cert: x509.Certificate, ca_cert: x509.Certificate) -> str | None:
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
