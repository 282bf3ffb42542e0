"""One exception hierarchy for exprsn-ipc.

Every error raised by this package is an :class:`IPCError`. Subclasses also
inherit the builtin they resemble, so callers may catch either
``IPCError``/``TokenError`` or ``ValueError``/``TimeoutError``. Each class has a
stable machine-readable ``code`` (the string used in counters, ``ipc:error``
payloads and ack callbacks).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AuthError",
    "BufferFullError",
    "CertificateError",
    "ConfigError",
    "CredentialError",
    "CredentialExpiredError",
    "CredentialMismatchError",
    "CredentialRequiredError",
    "CredentialRevokedError",
    "CredentialUntrustedError",
    "DemoError",
    "EnvelopeError",
    "ForbiddenError",
    "HandlerError",
    "IPCError",
    "ItemNotFoundError",
    "JSONLexError",
    "NoReceiversError",
    "NotConnectedError",
    "OperatorRequiredError",
    "PacketError",
    "PayloadTooLargeError",
    "PolicyDeniedError",
    "RateLimitError",
    "RemoteError",
    "RequestTimeoutError",
    "ResourceNotFoundError",
    "ServerStartError",
    "StoreFullError",
    "TokenBindingError",
    "TokenError",
    "TokenExpiredError",
    "TokenPurposeError",
    "TokenReplayedError",
    "TokenRevokedError",
    "TransportError",
    "error_class",
    "error_from_code",
]


class IPCError(Exception):
    """Base class of every exprsn-ipc error."""

    code: str = "IPC_ERROR"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(IPCError, ValueError):
    """A setting is missing or has a bad value; the message names the variable."""

    code = "CONFIG_ERROR"


class EnvelopeError(IPCError, ValueError):
    """A message envelope is malformed: not JSON, wrong types, missing fields."""

    code = "INVALID_MESSAGE"


class PayloadTooLargeError(EnvelopeError):
    """A message is larger than the configured limit."""

    code = "PAYLOAD_TOO_LARGE"


class TokenError(IPCError, ValueError):
    """A broker token is malformed, forged or otherwise invalid."""

    code = "INVALID_TOKEN"


class TokenExpiredError(TokenError):
    """A broker token's ``exp`` is in the past."""

    code = "TOKEN_EXPIRED"


class TokenRevokedError(TokenError):
    """A broker token was revoked."""

    code = "TOKEN_REVOKED"


class TokenBindingError(TokenError):
    """The envelope's event, source, target or data differ from the signed claims."""

    code = "TOKEN_MISMATCH"


class TokenPurposeError(TokenError):
    """A token was used for what it was not signed for: a message's token to log in, or the reverse."""

    code = "TOKEN_PURPOSE"


class TokenReplayedError(TokenError):
    """An envelope that was already accepted once was sent again (an exact replay)."""

    code = "TOKEN_REPLAYED"


class AuthError(IPCError, PermissionError):
    """A caller is not authenticated or not allowed."""

    code = "UNAUTHORIZED"


class ForbiddenError(AuthError):
    """An authenticated caller may not do this (another service's item, say)."""

    code = "FORBIDDEN"


class PolicyDeniedError(ForbiddenError):
    """The access policy (``IPC_POLICY``) does not allow this; ``rule`` names the rule that decided."""

    code = "FORBIDDEN"

    def __init__(self, message: str = "", *, rule: str = "default") -> None:
        super().__init__(message)
        self.rule = rule


class OperatorRequiredError(AuthError):
    """An operator endpoint (stats detail, metrics, dashboard) was asked for without an operator credential."""

    code = "OPERATOR_REQUIRED"


class CredentialError(AuthError):
    """A service credential (``exprsn-ipc certs issue``) was presented and is not valid: a bad
    signature, a handshake token that is malformed, stale or used twice."""

    code = "CREDENTIAL_INVALID"


class CredentialRequiredError(CredentialError):
    """The service has its own credential (or is not on the shared-key list), so the
    shared broker key alone cannot speak for it."""

    code = "CREDENTIAL_REQUIRED"


class CredentialMismatchError(CredentialError):
    """A valid credential of one service was presented for another."""

    code = "CREDENTIAL_MISMATCH"


class CredentialUntrustedError(CredentialError):
    """The credential was not issued by this Bridge's root CA."""

    code = "CREDENTIAL_UNTRUSTED"


class CredentialExpiredError(CredentialError):
    """The credential's certificate is expired (or not valid yet)."""

    code = "CREDENTIAL_EXPIRED"


class CredentialRevokedError(CredentialError):
    """The credential was revoked (``exprsn-ipc certs revoke``)."""

    code = "CREDENTIAL_REVOKED"


class RateLimitError(IPCError):
    """A service exceeded its IPC rate limit."""

    code = "RATE_LIMIT_EXCEEDED"


class JSONLexError(IPCError, ValueError):
    """A JSONLex expression failed; ``path`` locates the failing node."""

    code = "JSONLEX_ERROR"

    def __init__(self, message: str, *, path: str = "$") -> None:
        super().__init__(f"{message} (at {path})")
        self.path = path
        self.reason = message


class TransportError(IPCError, ConnectionError):
    """The transport (Redis, the Bridge, the in-memory bus) failed."""

    code = "TRANSPORT_ERROR"


class NotConnectedError(TransportError):
    """The worker is not started or already disconnected."""

    code = "NOT_CONNECTED"


class BufferFullError(TransportError):
    """The offline emit buffer of the bridge transport is full."""

    code = "BUFFER_FULL"


class NoReceiversError(IPCError, LookupError):
    """Nobody is subscribed to the target of a request."""

    code = "NO_RECEIVERS"


class RequestTimeoutError(IPCError, TimeoutError):
    """No reply arrived within the request's timeout."""

    code = "REQUEST_TIMEOUT"


class RemoteError(IPCError):
    """The serving side of a request, CRUD call or JSONLex call reported an error."""

    code = "REMOTE_ERROR"


class HandlerError(IPCError):
    """A message handler raised; wraps the original exception as ``__cause__``."""

    code = "HANDLER_ERROR"


class CertificateError(IPCError, OSError):
    """A certificate is missing, unreadable, expired or does not chain to the CA."""

    code = "CERTIFICATE_ERROR"


class ServerStartError(IPCError, OSError):
    """A server could not start, for example because its port is in use."""

    code = "SERVER_START_FAILED"


class PacketError(EnvelopeError):
    """A websocket frame that is not a Socket.IO packet this side understands."""


class ResourceNotFoundError(IPCError, LookupError):
    """No resource of that name is served here, or it lacks the operation."""

    code = "RESOURCE_NOT_FOUND"


class ItemNotFoundError(IPCError, LookupError):
    """The built-in store has no item with that id."""

    code = "NOT_FOUND"


class StoreFullError(IPCError):
    """The built-in store reached its bounds."""

    code = "STORE_FULL"


class DemoError(IPCError, RuntimeError):
    """The demo cannot start (a port is taken, a step failed, ...)."""

    code = "DEMO_ERROR"


def _leaf_classes(cls: type[IPCError]) -> list[type[IPCError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_leaf_classes(sub))
    return found


#: Every code this package raises, mapped to its class (the first class declaring it).
_BY_CODE: Final[dict[str, type[IPCError]]] = {}
for _cls in _leaf_classes(IPCError):
    _BY_CODE.setdefault(_cls.code, _cls)
del _cls


def error_class(code: str) -> type[IPCError]:
    """The class that raises ``code`` (``TokenError`` for unknown ``TOKEN_*`` codes, else ``IPCError``)."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    return TokenError if code.startswith("TOKEN") else IPCError


def error_from_code(code: str, message: str, *, default: type[IPCError] = IPCError) -> IPCError:
    """Rebuild the error a peer reported as ``{"error": code, "message": message}``.

    Unknown codes become ``default`` (the caller's idea of where the error came
    from) and keep the peer's code.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = TokenError if code.startswith("TOKEN") else default
    return cls(message, code=code)
