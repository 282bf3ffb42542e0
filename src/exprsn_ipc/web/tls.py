"""TLS for :class:`~exprsn_ipc.web.https.HTTPSServerManager`: certificate lookup and the server context."""

from __future__ import annotations

import datetime as _dt
import ssl
from pathlib import Path

from exprsn_ipc.certs.authority import KNOWN_SERVICES, certificate_info, find_certificate, generate_certificates
from exprsn_ipc.errors import CertificateError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.settings import Settings

__all__ = [
    "check_serving_certificate",
    "ensure_dev_certificates",
    "find_service_certificate",
    "refuse_plain_http",
    "server_ssl_context",
]

log = get_logger("exprsn_ipc.web.tls")


def find_service_certificate(certs_dir: Path, service_name: str) -> tuple[Path, Path] | None:
    """The service's own pair in ``certs_dir``, else the shared ``localhost`` pair, else ``None``."""
    try:
        return find_certificate(certs_dir, service_name)
    except CertificateError:
        # Not a valid service name (or "ca"): only the shared pair can apply.
        return find_certificate(certs_dir, "localhost")


def server_ssl_context(cert_path: Path, key_path: Path, *, mtls: bool, ca_path: Path) -> ssl.SSLContext:
    """A server TLS context: TLS ≥ 1.2, server cipher order, and with ``mtls`` a required client certificate.

    Raises:
        CertificateError: the certificate, key or (with ``mtls``) CA file cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load certificate {cert_path} with key {key_path}: {exc}") from exc
    if mtls:
        try:
            context.load_verify_locations(cafile=ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(f"mTLS needs the CA certificate {ca_path}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _fix(certs_dir: Path) -> str:
    return (
        f"run `exprsn-ipc certs generate --dir {certs_dir}` (or set CERTS_DIR to where they are), "
        "or set TLS_ENABLED=false explicitly to serve plain HTTP"
    )


def refuse_plain_http(settings: Settings, service: str, certs_dir: Path) -> None:
    """TLS is on but no certificate was found: fail closed in production, warn elsewhere.

    Before, production fell back to plain HTTP with a warning, so a missing
    ``CERTS_DIR`` silently served tokens in clear text. Only an explicit
    ``TLS_ENABLED=false`` (the default is ``true``) still serves plain HTTP there.

    Raises:
        CertificateError: ``NODE_ENV=production`` — the message names the fix.
    """
    if settings.is_production:
        raise CertificateError(
            f"{service}: TLS is required with NODE_ENV=production, but no certificate for it "
            f"(nor localhost-cert.pem) is in {certs_dir}: {_fix(certs_dir)}"
        )
    log.warning("TLS not enabled - certificates not found", extra={"service": service, "certs_dir": str(certs_dir)})


def check_serving_certificate(settings: Settings, service: str, cert_path: Path) -> None:
    """In production, refuse to serve a certificate that cannot be read or is outside its validity.

    Clients would refuse it anyway; stopping here names the file and the fix
    instead of leaving every worker to fail its handshake.

    Raises:
        CertificateError: ``NODE_ENV=production`` and the certificate is unreadable,
            expired or not yet valid.
    """
    if not settings.is_production:
        return
    info = certificate_info(cert_path)  # CertificateError when unreadable
    now = _dt.datetime.now(_dt.UTC)
    if info.valid_to <= now or info.valid_from > now:
        state = "expired" if info.valid_to <= now else "not yet valid"
        raise CertificateError(
            f"{service}: the certificate {cert_path} is {state} "
            f"(valid {info.valid_from:%Y-%m-%d} to {info.valid_to:%Y-%m-%d}): {_fix(cert_path.parent)}"
        )


def ensure_dev_certificates(settings: Settings, service: str = "exprsn-bridge") -> None:
    """In development, create the local CA and certificates when none exist yet.

    Elsewhere nothing is generated: the server manager then refuses to start in
    production (:func:`refuse_plain_http`) and warns otherwise.
    """
    if not settings.tls_enabled or not settings.is_development:
        return
    if find_certificate(settings.certs_dir, service) is not None:
        return
    extra = () if service in KNOWN_SERVICES else (service,)
    generate_certificates(settings.certs_dir, extra_services=extra)
    log.warning(
        "generated development certificates in %s (trust %s/ca-cert.pem)", settings.certs_dir, settings.certs_dir
    )
