"""exprsn-ipc: the Exprsn IPC system in Python.

A Bridge (Socket.IO IPC router) and a per-service IPC worker with signed broker
tokens, rate limits, discovery, JSONLex, HTTPS and a development bypass,
wire-compatible with the original Node.js services.
"""

from __future__ import annotations

from exprsn_ipc.errors import (
    AuthError,
    ConfigError,
    EnvelopeError,
    IPCError,
    JSONLexError,
    NoReceiversError,
    NotConnectedError,
    PayloadTooLargeError,
    RateLimitError,
    RemoteError,
    RequestTimeoutError,
    TokenError,
)
from exprsn_ipc.protocol.envelope import MISSING, Envelope
from exprsn_ipc.protocol.tokens import BrokerTokenManager
from exprsn_ipc.settings import Settings
from exprsn_ipc.worker.core import EmitResult, IPCWorker
from exprsn_ipc.worker.handlers import MessageMeta

__version__ = "1.0.0"

__all__ = [
    "MISSING",
    "AuthError",
    "BrokerTokenManager",
    "ConfigError",
    "EmitResult",
    "Envelope",
    "EnvelopeError",
    "IPCError",
    "IPCWorker",
    "JSONLexError",
    "MessageMeta",
    "NoReceiversError",
    "NotConnectedError",
    "PayloadTooLargeError",
    "RateLimitError",
    "RemoteError",
    "RequestTimeoutError",
    "Settings",
    "TokenError",
    "__version__",
]
