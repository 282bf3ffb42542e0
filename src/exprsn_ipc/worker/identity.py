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
from exprsn_ipc.protocol.tokens import BrokerTokenManager, vouched_claims
from exprsn_ipc.settings import Settings
from exprsn_ipc.transport.base import Transport

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

    def check(self, envelope: Envelope, tokens: BrokerTokenManager, *, vouched: bool) -> tuple[dict[str, Any], str]:
        """The claims and ``meta.trust`` of a received message.

        ``vouched``: the transport delivers only what a Bridge checked (identity at the
        connection), so an envelope without a token carries the Bridge's stamp instead.

        Raises:
            TokenError: a bad or missing token (or stamp).
            CredentialError: (and subclasses) the shared key may not speak for its source, or
                its countersignature is bad.
        """
        if envelope.token is None and vouched:
            return vouched_claims(envelope)
        claims = tokens.verify_envelope(envelope)
        assert envelope.token is not None
        return claims, self.identities.check_message(envelope.source, envelope.token, envelope.metadata)

    def build(
        self,
        tokens: BrokerTokenManager,
        transport: Transport,
        event: str,
        data: Any,
        *,
        target: str,
        operation: str,
        require_ack: bool,
        ttl: int | None,
        metadata: dict[str, Any] | None,
    ) -> Envelope:
        """An outgoing envelope: signed (and countersigned with a credential), or, on a lane
        with identity at the connection, without a token for the Bridge to stamp."""
        if transport.sends_unsigned and ttl is None:
            return tokens.unsigned_envelope(
                event,
                data,
                target=target,
                trust=transport.lane_trust,
                operation=operation,
                require_ack=require_ack,
                metadata=metadata,
            )
        return tokens.sign_envelope(
            event, data, target=target, operation=operation, require_ack=require_ack, ttl=ttl, metadata=metadata
        )
