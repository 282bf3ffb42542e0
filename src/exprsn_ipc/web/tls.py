"""TLS for :class:`~exprsn_ipc.web.https.HTTPSServerManager`: certificate lookup and the server context."""

from __future__ import annotations

import ssl
from pathlib import Path

from exprsn_ipc.certs.authority import KNOWN_SERVICES, find_certificate, generate_certificates
from exprsn_ipc.errors import CertificateError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.settings import Settings

__all__ = ["ensure_dev_certificates", "find_service_certificate", "server_ssl_context"]

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


def ensure_dev_certificates(settings: Settings, service: str = "exprsn-bridge") -> None:
    """In development, create the local CA and certificates when none exist yet."""
    if not settings.tls_enabled or find_certificate(settings.certs_dir, service) is not None:
        return
    if not settings.is_development:
        log.warning(
            "TLS not enabled - certificates not found in %s (run `exprsn-ipc certs generate`)", settings.certs_dir
        )
        return
    extra = () if service in KNOWN_SERVICES else (service,)
    generate_certificates(settings.certs_dir, extra_services=extra)
    log.warning(
        "generated development certificates in %s (trust %s/ca-cert.pem)", settings.certs_dir, settings.certs_dir
    )
