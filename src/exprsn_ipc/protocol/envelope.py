"""The message envelope and its JSON encoding.

The encoding is byte-compatible with the original's ``JSON.stringify``: the same
keys in the same order, ``data`` left out when there is none, compact separators.
Decoding validates size, JSON, types and names before anything else looks at a
message, and raises a specific :class:`~exprsn_ipc.errors.EnvelopeError`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from exprsn_ipc.errors import EnvelopeError, PayloadTooLargeError
from exprsn_ipc.protocol.constants import BROADCAST
from exprsn_ipc.protocol.events import LOCAL_EVENTS, RESERVED_EVENTS

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MISSING",
    "Envelope",
    "dumps",
    "encoded_size",
    "is_local_event",
    "loads",
    "validate_event_name",
    "validate_resource_name",
    "validate_service_name",
]

DEFAULT_MAX_BYTES: Final = 1_048_576

_EVENT_RE: Final = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_.:/$-]{0,199}")
_SERVICE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_DUMPS_OPTS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY


class _Missing:
    """JavaScript's ``undefined`` for ``data``: the key is left out of the JSON."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact JSON the way ``JSON.stringify`` would."""
    try:
        return orjson.dumps(value, option=_DUMPS_OPTS)
    except TypeError as exc:
        raise EnvelopeError(f"payload is not JSON-serialisable: {exc}") from exc


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON, raising :class:`EnvelopeError` on malformed input."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"message is not valid JSON: {exc}") from None


def validate_event_name(name: object, *, allow_local: bool = False) -> str:
    """Return ``name`` if it can travel as an IPC event, else raise EnvelopeError."""
    if not isinstance(name, str) or not _EVENT_RE.fullmatch(name):
        raise EnvelopeError(f"invalid event name {name!r}")
    if name in RESERVED_EVENTS:
        raise EnvelopeError(f"event name {name!r} is reserved by Socket.IO")
    if not allow_local and name in LOCAL_EVENTS:
        raise EnvelopeError(f"event name {name!r} is a local worker event and never leaves the process")
    return name


def validate_service_name(name: object, *, allow_broadcast: bool = False) -> str:
    """Return ``name`` if it is a valid service name (or ``broadcast``)."""
    if isinstance(name, str) and _SERVICE_RE.fullmatch(name) and (allow_broadcast or name != BROADCAST):
        return name
    if name == BROADCAST:
        raise EnvelopeError("'broadcast' is not a service here: name one target service")
    raise EnvelopeError(f"invalid service name {name!r}")


_RESOURCE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def validate_resource_name(name: object) -> str:
    """Return ``name`` if it is a valid CRUD resource name (1-64 of letters, digits, ``_ . : -``)."""
    if isinstance(name, str) and _RESOURCE_RE.fullmatch(name):
        return name
    raise EnvelopeError(f"invalid resource name {name!r} (1-64 letters, digits, _ . : -)")


def is_local_event(name: str) -> bool:
    return name in LOCAL_EVENTS


@dataclass(slots=True)
class Envelope:
    """One IPC message, as published on the bus.

    ``data`` is :data:`MISSING` when the sender gave none (the JSON then has no
    ``data`` key). ``token`` is the signed broker token.
    """

    event: str
    source: str
    target: str
    data: Any = MISSING
    operation: str = "event"
    token: str | None = None
    require_ack: bool = False
    timestamp: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def payload(self) -> Any:
        """``data``, or ``None`` when the envelope has none."""
        return None if self.data is MISSING else self.data

    def to_dict(self) -> dict[str, Any]:
        """The JSON object in the original's key order."""
        out: dict[str, Any] = {"event": self.event}
        if self.data is not MISSING:
            out["data"] = self.data
        out["source"] = self.source
        out["target"] = self.target
        out["operation"] = self.operation
        if self.token is not None:
            out["token"] = self.token
        out["requireAck"] = self.require_ack
        out["timestamp"] = self.timestamp
        out["metadata"] = self.metadata
        return out

    def encode(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
        """Parse and validate one published message.

        Raises:
            PayloadTooLargeError: ``raw`` is larger than ``max_bytes``.
            EnvelopeError: not JSON, not an object, or a field has the wrong type.
        """
        size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
        if size > max_bytes:
            raise PayloadTooLargeError(f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
        return cls.from_dict(loads(raw))

    @classmethod
    def from_dict(cls, obj: Any) -> Envelope:
        """Validate a decoded JSON object as an envelope."""
        if not isinstance(obj, dict):
            raise EnvelopeError("message is not a JSON object")
        event = obj.get("event")
        validate_event_name(event, allow_local=True)
        source = obj.get("source")
        if not isinstance(source, str) or not source:
            raise EnvelopeError("message has no valid 'source'")
        target = obj.get("target")
        if not isinstance(target, str) or not target:
            raise EnvelopeError("message has no valid 'target'")
        operation = obj.get("operation", "event")
        if not isinstance(operation, str):
            raise EnvelopeError("'operation' must be a string")
        token = obj.get("token")
        if token is not None and not isinstance(token, str):
            raise EnvelopeError("'token' must be a string")
        require_ack = obj.get("requireAck", False)
        if not isinstance(require_ack, bool):
            raise EnvelopeError("'requireAck' must be a boolean")
        timestamp = obj.get("timestamp", 0)
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise EnvelopeError("'timestamp' must be a number")
        metadata = obj.get("metadata", {})
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise EnvelopeError("'metadata' must be an object")
        return cls(
            event=event,  # type: ignore[arg-type]
            source=source,
            target=target,
            data=obj.get("data", MISSING),
            operation=operation,
            token=token,
            require_ack=require_ack,
            timestamp=int(timestamp),
            metadata=metadata,
        )


def encoded_size(value: Any) -> int:
    """Bytes ``value`` takes as JSON (used to refuse oversized payloads early)."""
    return len(dumps(value))
