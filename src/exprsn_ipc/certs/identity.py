"""Who may speak for which service: own credentials, the shared-key list, per-message signatures.

Three trust levels, written into every handled message's ``meta.trust``:

- ``"credential"``: the service proved it holds its own key: at connection (the
  handshake token) or, on Redis, by the Ed25519 signature of the message's broker
  token in ``metadata.credential``;
- ``"shared-key"``: only the shared HS256 broker key vouches for it (the original's
  model: whoever holds the key may claim any ``source``);
- ``"bypass"``: the development bypass (development, loopback only).

A service that holds a valid credential, or that is not on the shared-key list
(``IPC_SHARED_KEY_SERVICES`` or the policy's ``shared_key``), cannot be spoken for
with the shared key alone: the Bridge refuses such a connection and workers refuse
such a message (``CREDENTIAL_REQUIRED``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from exprsn_ipc.certs.credentials import Credential, TrustStore, credential_paths, load_credential
from exprsn_ipc.certs.handshake import verify_handshake
from exprsn_ipc.errors import CertificateError, CredentialError, CredentialRequiredError
from exprsn_ipc.protocol.constants import (
    BRIDGE_SERVICE,
    CREDENTIAL_META_KEY,
    TRUST_BYPASS,
    TRUST_CREDENTIAL,
    TRUST_SHARED_KEY,
    full_service_name,
)
from exprsn_ipc.protocol.stores import MemoryReplayGuard
from exprsn_ipc.protocol.tokens import b64url_decode, b64url_encode

__all__ = [
    "TRUST_BYPASS",
    "TRUST_CREDENTIAL",
    "TRUST_SHARED_KEY",
    "ServiceIdentities",
    "find_credential",
    "parse_shared_key_list",
    "sign_token",
]

#: Handshake token ids remembered to refuse a second use (each lives a minute).
_HANDSHAKES_REMEMBERED: Final = 100_000


def parse_shared_key_list(value: str | None, policy_list: frozenset[str] | None) -> frozenset[str] | None:
    """The services the shared key may speak for; None: every one without a credential.

    ``value`` is ``IPC_SHARED_KEY_SERVICES`` (``*``, ``none`` or a comma list), which wins
    over the policy file's ``shared_key``.
    """
    if value is None:
        return None if policy_list is None else frozenset(full_service_name(n) for n in policy_list)
    text = value.strip()
    if text == "*":
        return None
    if text.lower() == "none":
        return frozenset()
    return frozenset(full_service_name(n.strip()) for n in text.split(",") if n.strip())


def find_credential(certs_dir: Path, service: str, configured: Path | None) -> Credential | None:
    """``service``'s own credential: ``configured`` (IPC_CREDENTIAL), else the issued one in
    ``certs_dir/credentials`` if present; None when the service has none.

    Raises:
        CertificateError: the configured file is missing or broken, or belongs to another service.
    """
    if configured is None:
        key_path = credential_paths(certs_dir, service)[1]
        if not key_path.is_file():
            return None
    else:
        key_path = configured
    credential = load_credential(key_path)
    if credential.service != full_service_name(service):
        raise CertificateError(f"IPC_CREDENTIAL {key_path} is the credential of {credential.service}, not {service}")
    return credential


def sign_token(credential: Credential, token: str) -> str:
    """The ``metadata.credential`` value for a message whose broker token is ``token``."""
    signature = credential.key.sign(token.encode("ascii"))
    encoded = b64url_encode(signature).decode("ascii")
    return f"{credential.service}:{credential.serial:x}.{encoded}"


class ServiceIdentities:
    """One process's view of the services' identities (the Bridge's, or a worker's)."""

    def __init__(self, certs_dir: Path, *, shared_key: frozenset[str] | None, recheck_s: float = 2.0) -> None:
        self.trust = TrustStore(certs_dir)
        #: See :func:`parse_shared_key_list`.
        self.shared_key = shared_key
        self.recheck_s = recheck_s
        self._checked = time.monotonic()
        self._handshakes = MemoryReplayGuard(max_entries=_HANDSHAKES_REMEMBERED)

    def refresh(self) -> frozenset[int]:
        """Re-read the CA, credentials and revocation list if they changed; the newly revoked serials."""
        self._checked = time.monotonic()
        return self.trust.refresh()

    def _maybe_refresh(self) -> None:
        # Per message, a stat() of three files would cost more than the check itself.
        if time.monotonic() - self._checked >= self.recheck_s:
            self.refresh()

    def needs_credential(self, service: str) -> bool:
        """True when the shared key alone may not speak for ``service``."""
        if service in self.trust.credentialed():
            return True
        # The Bridge answers CRUD and JSONLex as exprsn-bridge: it keeps the shared key until
        # it has a credential of its own (`exprsn-ipc certs issue bridge`).
        return self.shared_key is not None and service not in self.shared_key and service != BRIDGE_SERVICE

    def check_shared_key(self, service: str) -> None:
        """Raise :class:`CredentialRequiredError` if the shared key may not speak for ``service``."""
        self._maybe_refresh()
        if not self.needs_credential(service):
            return
        if service in self.trust.credentialed():
            key = credential_paths(self.trust.certs_dir, service)[1]
            raise CredentialRequiredError(
                f"{service} has its own credential: the shared broker key cannot speak for it "
                f"(the service signs its handshake with {key})"
            )
        raise CredentialRequiredError(
            f"{service} is not on the shared-key list (IPC_SHARED_KEY_SERVICES): it needs its own credential "
            f"(`exprsn-ipc certs issue {service}`)"
        )

    def admit_handshake(self, token: str, service: str) -> tuple[dict[str, Any], x509.Certificate]:
        """Verify a handshake token for ``service`` and spend it; its claims and certificate.

        Raises:
            CredentialError: (and subclasses) the credential or the token is not good.
        """
        self._maybe_refresh()
        claims, cert = verify_handshake(token, self.trust, service)
        if not self._handshakes.first_use(str(claims["id"]), float(claims["exp"]) + 60):
            raise CredentialError("this handshake token was already used (each connection signs a new one)")
        return claims, cert

    def check_message(self, source: str, token: str, metadata: dict[str, Any]) -> str:
        """The trust level of a signed message, by its ``metadata.credential`` signature: made
        with the source's own key, or with a Bridge's (a Bridge vouching for a client it
        authenticated by its credential).

        Raises:
            CredentialRequiredError: no signature, and the shared key may not speak for ``source``.
            CredentialError: a signature that does not verify (and the TrustStore errors).
        """
        signed = metadata.get(CREDENTIAL_META_KEY)
        if signed is None:
            self.check_shared_key(source)
            return TRUST_SHARED_KEY
        if not isinstance(signed, str) or len(signed) > 300:
            raise CredentialError("malformed metadata.credential")
        signer, _, rest = signed.partition(":")
        serial_hex, _, signature = rest.partition(".")
        if signer not in (source, BRIDGE_SERVICE) or not signature:
            raise CredentialError(f"metadata.credential of a message from {source} is signed by {signer!r}")
        self._maybe_refresh()
        cert = self.trust.certificate(signer)
        if cert is None or f"{cert.serial_number:x}" != serial_hex:
            raise CredentialError(f"no credential {serial_hex} of {signer} is known here (CERTS_DIR/credentials)")
        self.trust.verify(cert, signer)
        public = cert.public_key()
        try:
            raw = b64url_decode(signature)
            if not isinstance(public, ed25519.Ed25519PublicKey):
                raise CredentialError("the credential's key is no Ed25519 key")
            public.verify(raw, token.encode("ascii"))
        except (InvalidSignature, ValueError):
            raise CredentialError(f"the message's credential signature does not verify for {signer}") from None
        return TRUST_CREDENTIAL
