"""A worker's identity: its own credential (if issued) and the check of who sent each message.

With a credential (``CERTS_DIR/credentials/<service>.key`` or ``IPC_CREDENTIAL``) the
worker signs its Bridge handshake with it, and countersigns every message's broker
token (``metadata.credential``) so that receivers on Redis, where the shared key's
holder may publish anything, can tell it from an impersonation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exprsn_ipc.certs.credentials import Credential
from exprsn_ipc.certs.identity import ServiceIdentities, find_credential, parse_shared_key_list, sign_token
from exprsn_ipc.protocol.envelope import Envelope
from exprsn_ipc.protocol.policy import load_policy
from exprsn_ipc.settings import Settings

__all__ = ["WorkerIdentity"]


class WorkerIdentity:
    """What one worker proves about itself, and checks about others."""

    def __init__(self, service: str, settings: Settings) -> None:
        #: This service's own credential, or None (then it speaks with the shared key).
        self.credential: Credential | None = find_credential(settings.certs_dir, service, settings.ipc_credential)
        self.identities = ServiceIdentities(
            settings.certs_dir,
            shared_key=parse_shared_key_list(
                settings.ipc_shared_key_services, load_policy(settings.ipc_policy).shared_key
            ),
            recheck_s=settings.ipc_credential_recheck,
        )

    @property
    def countersign(self) -> Callable[[str], str] | None:
        """The token countersignature for outgoing messages (None without a credential)."""
        credential = self.credential
        if credential is None:
            return None
        return lambda token: sign_token(credential, token)

    def trust_of(self, envelope: Envelope) -> str:
        """``meta.trust`` of a message whose broker token verified.

        Raises:
            CredentialError: (and subclasses) the shared key may not speak for its source, or
                its countersignature is bad.
        """
        assert envelope.token is not None
        metadata: dict[str, Any] = envelope.metadata
        return self.identities.check_message(envelope.source, envelope.token, metadata)
