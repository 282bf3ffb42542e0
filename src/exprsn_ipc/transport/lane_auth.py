"""How a worker's bridge transport proves who it is, and what the Bridge grants it.

The connect ``auth`` carries a handshake token signed with the service's own
credential when it has one (``certs/handshake.py``), else a login broker token,
and asks for identity at the connection. An embedded Bridge grants that in its
CONNECT packet (``{"identity": "connection", "trust": ...}``); a Bridge on Redis
does not, and the worker keeps signing each envelope.
"""

from __future__ import annotations

from typing import Any

from exprsn_ipc.certs.credentials import Credential
from exprsn_ipc.certs.handshake import sign_handshake
from exprsn_ipc.errors import AuthError
from exprsn_ipc.protocol.constants import (
    ENVELOPE_PROTOCOL,
    IDENTITY_AT_CONNECTION,
    IDENTITY_OPTION,
    TRUST_KEY,
    TRUST_LEVELS,
)
from exprsn_ipc.protocol.tokens import BrokerTokenManager

__all__ = ["connect_auth", "granted_trust", "refusal_hint"]


def connect_auth(
    tokens: BrokerTokenManager, credential: Credential | None, *, entry: dict[str, Any], durable: bool
) -> dict[str, Any]:
    """The ``auth`` of one (re)connection: each signs a new handshake token, good once."""
    token = sign_handshake(credential) if credential is not None else tokens.generate_token(operation="connect")
    return {
        "token": token,
        "protocol": ENVELOPE_PROTOCOL,
        "entry": entry,
        "durable": durable,
        IDENTITY_OPTION: IDENTITY_AT_CONNECTION,
    }


def granted_trust(connect_data: dict[str, Any]) -> str | None:
    """The connection's trust level if the Bridge granted identity at the connection, else None."""
    trust = connect_data.get(TRUST_KEY)
    if connect_data.get(IDENTITY_OPTION) == IDENTITY_AT_CONNECTION and trust in TRUST_LEVELS:
        return str(trust)
    return None


def refusal_hint(exc: AuthError, credentialed: bool) -> str:
    """The next step after the Bridge refused the connection."""
    if exc.code.startswith("CREDENTIAL_") or credentialed:
        return "(see `exprsn-ipc certs list` and docs/security.md, service credentials)"
    return "(compare IPC_BROKER_KEY with the Bridge's)"
