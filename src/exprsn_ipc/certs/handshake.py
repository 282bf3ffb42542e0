"""The handshake token: a worker proves at connection time that it holds its service's key.

A JWT signed with EdDSA (Ed25519) by the service's own credential key, with the
credential certificate in its ``x5c`` header, for one connection:

    header  {"alg": "EdDSA", "typ": "JWT", "x5c": ["<certificate, DER, base64>"]}
    payload {"source": "exprsn-timeline", "operation": "connect", "aud": "exprsn-ipc-bridge",
             "iat": ..., "exp": iat + 60, "id": "<random>"}

Any JWT library that speaks EdDSA (``jsonwebtoken`` does not; ``jose`` does) can
make one. The Bridge checks the certificate against its root CA and revocation
list (:class:`~exprsn_ipc.certs.credentials.TrustStore`), the signature against
the certificate's key, the names, the lifetime and that the token is used once.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exprsn_ipc.certs.credentials import Credential, TrustStore
from exprsn_ipc.errors import CredentialError
from exprsn_ipc.protocol.tokens import b64url_decode, b64url_encode

__all__ = ["HANDSHAKE_AUDIENCE", "HANDSHAKE_TTL_S", "is_handshake", "sign_handshake", "verify_handshake"]

HANDSHAKE_ALG: Final = "EdDSA"
HANDSHAKE_AUDIENCE: Final = "exprsn-ipc-bridge"
HANDSHAKE_OPERATION: Final = "connect"
#: A handshake token is good for this long (and once).
HANDSHAKE_TTL_S: Final = 60
#: Clock difference tolerated between a worker and the Bridge.
CLOCK_SKEW_S: Final = 30
#: Larger handshake tokens are refused before any parsing (a certificate is well under 2 KB).
MAX_HANDSHAKE_BYTES: Final = 8192


def _b64(data: bytes) -> str:
    return b64url_encode(data).decode("ascii")


def sign_handshake(credential: Credential, *, now: float | None = None) -> str:
    """A fresh handshake token for ``credential``'s service."""
    issued = int(time.time() if now is None else now)
    der = credential.certificate.public_bytes(serialization.Encoding.DER)
    header = {"alg": HANDSHAKE_ALG, "typ": "JWT", "x5c": [base64.b64encode(der).decode("ascii")]}
    payload = {
        "source": credential.service,
        "operation": HANDSHAKE_OPERATION,
        "aud": HANDSHAKE_AUDIENCE,
        "iat": issued,
        "exp": issued + HANDSHAKE_TTL_S,
        "id": secrets.token_hex(16),
    }
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = credential.key.sign(signing_input.encode("ascii"))
    return signing_input + "." + _b64(signature)


def _header(token: str) -> dict[str, Any] | None:
    head = token.partition(".")[0]
    if len(head) > MAX_HANDSHAKE_BYTES:
        return None
    try:
        header = json.loads(b64url_decode(head))
    except ValueError:  # binascii.Error and TokenError are ValueErrors
        return None
    return header if isinstance(header, dict) else None


def is_handshake(token: str) -> bool:
    """Whether ``token`` claims to be a handshake token (an EdDSA JWT) rather than a broker token."""
    header = _header(token)
    return header is not None and header.get("alg") == HANDSHAKE_ALG


def verify_handshake(
    token: str, trust: TrustStore, service: str, *, now: float | None = None
) -> tuple[dict[str, Any], x509.Certificate]:
    """Check a handshake token for ``service``; its claims and certificate.

    The caller keeps the claims' ``id`` to refuse a second use.

    Raises:
        CredentialError: malformed, bad signature, wrong names or outside its lifetime
            (and the :meth:`TrustStore.verify` errors for the certificate).
    """
    if len(token) > MAX_HANDSHAKE_BYTES:
        raise CredentialError(f"a handshake token is at most {MAX_HANDSHAKE_BYTES} bytes")
    parts = token.split(".")
    header = _header(token)
    if len(parts) != 3 or header is None or header.get("alg") != HANDSHAKE_ALG:
        raise CredentialError("malformed handshake token")
    chain = header.get("x5c")
    if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
        raise CredentialError("the handshake token carries no certificate (x5c)")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
        payload = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except ValueError:  # binascii.Error and TokenError are ValueErrors
        raise CredentialError("malformed handshake token") from None
    trust.verify(cert, service)
    public = cert.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise CredentialError("the credential's key is no Ed25519 key")
    try:
        public.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise CredentialError(f"the handshake token was not signed with {service}'s key") from None
    if not isinstance(payload, dict):
        raise CredentialError("malformed handshake token")
    if payload.get("source") != service or payload.get("operation") != HANDSHAKE_OPERATION:
        raise CredentialError(f"the handshake token is not a connection of {service}")
    if payload.get("aud") != HANDSHAKE_AUDIENCE:
        raise CredentialError("the handshake token is for another audience")
    clock = time.time() if now is None else now
    issued, expires = payload.get("iat"), payload.get("exp")
    if not isinstance(issued, int) or not isinstance(expires, int) or expires - issued > HANDSHAKE_TTL_S:
        raise CredentialError(f"a handshake token has iat and exp at most {HANDSHAKE_TTL_S} s apart")
    if not issued - CLOCK_SKEW_S <= clock <= expires + CLOCK_SKEW_S:
        raise CredentialError("the handshake token is stale (or the clocks differ by more than 30 s)")
    if not isinstance(payload.get("id"), str):
        raise CredentialError("the handshake token has no id")
    return payload, cert
