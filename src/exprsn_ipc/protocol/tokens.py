"""Broker tokens: HS256 JWTs with exactly the original's claims.

Signing and verifying are done here with ``hmac`` and ``orjson`` rather than
PyJWT: the result is the same standard compact JWS (Node's ``jsonwebtoken``
verifies ours and we verify its), at about a tenth of PyJWT's cost, which
matters because every message carries a fresh token (see docs/performance.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from exprsn_ipc.errors import (
    EnvelopeError,
    TokenBindingError,
    TokenError,
    TokenExpiredError,
    TokenPurposeError,
    TokenRevokedError,
)
from exprsn_ipc.protocol.constants import (
    CREDENTIAL_META_KEY,
    LOGIN_OPERATION,
    MAX_TOKEN_ID_LEN,
    MESSAGE_ID_KEY,
    REVOCATION_TTL_S,
    TOKEN_TYPE,
    TOKEN_VERSION,
    TRUST_KEY,
    TRUST_LEVELS,
)
from exprsn_ipc.protocol.envelope import MISSING, Envelope, dumps
from exprsn_ipc.protocol.jsonvalues import json_equal
from exprsn_ipc.protocol.stores import MemoryRevocationStore, MemoryStateStore, RevocationStore, StateStore
from exprsn_ipc.settings import Settings

__all__ = [
    "BrokerTokenManager",
    "b64url_decode",
    "b64url_encode",
    "decode_unverified",
    "is_message_token",
    "token_lifetime",
    "vouched_claims",
]

_HEADER: Final = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def b64url_encode(raw: bytes) -> bytes:
    """Unpadded base64url, as JWTs use it."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def b64url_decode(seg: bytes | str) -> bytes:
    """The inverse of :func:`b64url_encode`.

    Raises:
        TokenError: (a ``ValueError``) not base64url.
    """
    try:
        data = seg.encode("ascii") if isinstance(seg, str) else seg
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("jwt malformed") from None


def decode_unverified(token: str) -> dict[str, Any]:
    """The claims of ``token`` without checking its signature (for tooling only)."""
    parts = token.encode("ascii", "replace").split(b".")
    if len(parts) != 3:
        raise TokenError("jwt malformed")
    claims = _json(b64url_decode(parts[1]))
    if not isinstance(claims, dict):
        raise TokenError("jwt malformed")
    return claims


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TokenError("jwt malformed") from None


def is_message_token(claims: dict[str, Any]) -> bool:
    """True for a token signed for a message: it names its event (``metadata.event``).

    Every receiver of a message holds its token, so such a token must never log in.
    A login token has ``operation: "connect"`` (or names no event, as the original's
    ``generateToken()`` with no options does).
    """
    meta = claims.get("metadata")
    return claims.get("operation") != LOGIN_OPERATION and isinstance(meta, dict) and "event" in meta


def token_lifetime(claims: dict[str, Any]) -> tuple[str, float]:
    """The verified token's id and until when it is valid (epoch seconds), for replay guards.

    A stateful token has no ``exp``: it counts as valid for as long as revocations are kept.
    """
    exp = claims.get("exp")
    expires = (
        float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else time.time() + REVOCATION_TTL_S
    )
    return str(claims.get("id")), expires


class BrokerTokenManager:
    """Signs and verifies broker tokens for one service.

    Args:
        service_name: the signer, written into the ``source`` claim.
        settings: supplies ``IPC_BROKER_KEY``, ``IPC_TOKEN_TTL`` and the
            ``authBypass`` claim.
        revocations / states: stores; in memory unless a transport provides others.
    """

    def __init__(
        self,
        *,
        service_name: str,
        settings: Settings,
        revocations: RevocationStore | None = None,
        states: StateStore | None = None,
        countersign: Callable[[str], str] | None = None,
    ) -> None:
        self.service_name = service_name
        #: Signs each message's token with the service's own key (``metadata.credential``).
        self.countersign = countersign
        self.settings = settings
        self._key = settings.broker_key_bytes
        self.default_ttl = settings.ipc_token_ttl
        self._auth_bypass = settings.auth_bypass_claim
        self.revocations: RevocationStore = revocations or MemoryRevocationStore()
        self.states: StateStore = states or MemoryStateStore()

    # Signing --------------------------------------------------------------------
    def build_claims(
        self,
        payload: Any = MISSING,
        *,
        target_service: str = "*",
        operation: str = "ipc",
        stateful: bool = False,
        ttl: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The claims ``generate_token`` signs, in the original's order."""
        token_id = secrets.token_hex(16)
        claims: dict[str, Any] = {
            "id": token_id,
            "type": TOKEN_TYPE,
            "version": TOKEN_VERSION,
            "source": self.service_name,
            "target": target_service,
            "operation": operation,
        }
        if not stateful:
            seconds = self.default_ttl if ttl is None else ttl
            claims["exp"] = (time.time_ns() // 1_000_000 + seconds * 1000) // 1000
        claims["stateful"] = stateful
        claims["stateKey"] = f"state:{token_id}" if stateful else None
        claims["rateLimitExempt"] = True
        claims["authBypass"] = self._auth_bypass
        claims["data"] = {} if payload is MISSING or payload is None else payload
        claims["metadata"] = dict(metadata or {})
        return claims

    def sign_claims(self, claims: dict[str, Any]) -> str:
        signing_input = _HEADER + b"." + b64url_encode(dumps(claims))
        return (signing_input + b"." + b64url_encode(hmac.digest(self._key, signing_input, "sha256"))).decode("ascii")

    def generate_token(
        self,
        payload: Any = MISSING,
        *,
        target_service: str = "*",
        operation: str = "ipc",
        stateful: bool = False,
        ttl: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Sign a broker token.

        ``ttl`` defaults to ``IPC_TOKEN_TTL``. A stateful token has no ``exp``
        and a ``stateKey``; it lives until revoked.
        """
        return self.sign_claims(
            self.build_claims(
                payload,
                target_service=target_service,
                operation=operation,
                stateful=stateful,
                ttl=ttl,
                metadata=metadata,
            )
        )

    def sign_envelope(
        self,
        event: str,
        data: Any = MISSING,
        *,
        target: str,
        operation: str = "event",
        require_ack: bool = False,
        ttl: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Envelope:
        """An envelope from this service, signed for exactly this event, target and data.

        Raises:
            EnvelopeError: ``operation`` is the login operation; such a token in a
                message would let every receiver log in as this service.
        """
        meta = _message_metadata(operation, metadata)
        claims = self.build_claims(
            data, target_service=target, operation=operation, ttl=ttl, metadata={"event": event, **meta}
        )
        token = self.sign_claims(claims)
        if self.countersign is not None:
            meta[CREDENTIAL_META_KEY] = self.countersign(token)
        return Envelope(
            event=event,
            source=self.service_name,
            target=target,
            data=data,
            operation=operation,
            token=token,
            require_ack=require_ack,
            metadata=meta,
        )

    def unsigned_envelope(
        self,
        event: str,
        data: Any = MISSING,
        *,
        target: str,
        trust: str,
        operation: str = "event",
        require_ack: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> Envelope:
        """An envelope without a broker token, for a connection whose identity the Bridge
        verified (``IDENTITY_AT_CONNECTION``): the Bridge stamps it, receivers trust the Bridge."""
        meta = _message_metadata(operation, metadata)
        meta[MESSAGE_ID_KEY] = secrets.token_hex(16)
        meta[TRUST_KEY] = trust
        return Envelope(event, self.service_name, target, data, operation, require_ack=require_ack, metadata=meta)

    # Verification ---------------------------------------------------------------
    def verify_token(self, token: str) -> dict[str, Any]:
        """Verify ``token`` and return its claims.

        Order: shape, signature, type, expiry, then revocation (a local lookup),
        so nothing about an unsigned token is looked up anywhere.

        Raises:
            TokenError: malformed, bad signature or wrong type.
            TokenExpiredError: ``exp`` has passed.
            TokenRevokedError: the token was revoked.
        """
        if not isinstance(token, str):
            raise TokenError("jwt must be a string")
        raw = token.encode("ascii", "replace")
        signing_input, dot, signature = raw.rpartition(b".")
        header, dot2, body = signing_input.partition(b".")
        if not dot or not dot2 or b"." in body:
            raise TokenError("jwt malformed")
        if header != _HEADER:
            head = _json(b64url_decode(header))
            if not isinstance(head, dict) or head.get("alg") != "HS256":
                raise TokenError("invalid algorithm")
        expected = hmac.digest(self._key, signing_input, "sha256")
        if not hmac.compare_digest(b64url_decode(signature), expected):
            raise TokenError("invalid signature")
        claims = _json(b64url_decode(body))
        if not isinstance(claims, dict) or claims.get("type") != TOKEN_TYPE:
            raise TokenError("Invalid broker token type")
        exp = claims.get("exp")
        if exp is not None:
            if isinstance(exp, bool) or not isinstance(exp, int | float):
                raise TokenError("invalid exp value")
            if time.time() >= exp:
                raise TokenExpiredError("jwt expired")
        elif not claims.get("stateful"):
            raise TokenError("token has no exp and is not stateful")
        token_id = claims.get("id")
        if not isinstance(token_id, str):
            raise TokenError("token has no id")
        if self.revocations.is_revoked(token_id):
            raise TokenRevokedError("Token has been revoked")
        return claims

    def verify_login(self, token: str) -> dict[str, Any]:
        """Verify a token presented to log in (a connection, an HTTP call) and return its claims.

        Raises:
            TokenPurposeError: it is a message's token (see :func:`is_message_token`).
            TokenError: as :meth:`verify_token`.
        """
        claims = self.verify_token(token)
        if is_message_token(claims):
            raise TokenPurposeError(
                f"this token was signed for a message, not to log in: generate one with operation={LOGIN_OPERATION!r}"
            )
        return claims

    def verify_envelope(self, envelope: Envelope) -> dict[str, Any]:
        """Verify the envelope's token and that it was signed for this envelope.

        ``source``, ``target``, ``event`` (``metadata.event``) and ``data`` must
        equal the signed claims (DESIGN fix 3); a missing ``data`` signs as ``{}``.
        """
        if envelope.token is None:
            raise TokenError("message carries no broker token")
        claims = self.verify_token(envelope.token)
        if claims.get("operation") == LOGIN_OPERATION:
            raise TokenPurposeError("a login token does not sign messages")
        meta = claims.get("metadata")
        signed_event = meta.get("event") if isinstance(meta, dict) else None
        if claims.get("source") != envelope.source:
            raise TokenBindingError("envelope source does not match the signed source")
        if claims.get("target") != envelope.target:
            raise TokenBindingError("envelope target does not match the signed target")
        if signed_event != envelope.event:
            raise TokenBindingError("envelope event does not match the signed event")
        data = {} if envelope.data is MISSING else envelope.data
        signed = claims.get("data")
        # A missing or null data signs as {} (the original's `data || {}`).
        if not json_equal(signed, data) and not (envelope.data is None and signed == {}):
            raise TokenBindingError("envelope data does not match the signed data")
        return claims

    # Revocation and state -------------------------------------------------------
    async def revoke_token(self, token_id: str, *, ttl: int = REVOCATION_TTL_S) -> bool:
        """Revoke a token by id; every verifier sharing the store rejects it from now on."""
        return await self.revocations.revoke(token_id, ttl=ttl)

    def is_revoked(self, token_id: str) -> bool:
        return self.revocations.is_revoked(token_id)

    async def set_state(self, token_id: str, state: Any) -> None:
        await self.states.set_state(token_id, state)

    async def get_state(self, token_id: str) -> Any:
        return await self.states.get_state(token_id)

    async def delete_state(self, token_id: str) -> bool:
        return await self.states.delete_state(token_id)


def _message_metadata(operation: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A message's metadata, refused for the login operation: such a token in a message would
    let every receiver log in as its sender. A countersignature is never taken from the caller."""
    if operation == LOGIN_OPERATION:
        raise EnvelopeError(f"a message cannot have operation {LOGIN_OPERATION!r} (that marks a login token)")
    meta = dict(metadata or {})
    meta.pop(CREDENTIAL_META_KEY, None)
    return meta


def vouched_claims(envelope: Envelope) -> tuple[dict[str, Any], str]:
    """The claims and trust level of an envelope a Bridge vouched for (no broker token).

    Raises:
        TokenError: it names no message id or no known trust level.
    """
    meta = envelope.metadata
    message_id, trust = meta.get(MESSAGE_ID_KEY), meta.get(TRUST_KEY)
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_TOKEN_ID_LEN:
        raise TokenError("message carries no broker token")
    if trust not in TRUST_LEVELS:
        raise TokenError(f"a message without a broker token names no trust level ({TRUST_KEY})")
    claims = {
        "id": message_id,
        "source": envelope.source,
        "target": envelope.target,
        "operation": envelope.operation,
        "metadata": {"event": envelope.event},
        TRUST_KEY: trust,
    }
    return claims, str(trust)
