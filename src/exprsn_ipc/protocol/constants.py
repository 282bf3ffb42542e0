"""Wire names and defaults shared with the original Node.js implementation.

Everything a Node worker on the same bus must agree with lives here, so the
compatibility contract can be read in one place.
"""

from __future__ import annotations

from typing import Final

#: Default worker namespace; channels are ``<namespace>:<service>``.
DEFAULT_NAMESPACE: Final = "ipc"
#: The broadcast target and the channel suffix every worker subscribes to.
BROADCAST: Final = "broadcast"
#: The Bridge's own service name on the bus.
BRIDGE_SERVICE: Final = "exprsn-bridge"
#: The original CRUD/JSONLex helpers default to this target; the Bridge serves it too.
BRIDGE_ALIAS: Final = "bridge"

#: Envelope keys in the order the original's ``JSON.stringify`` writes them.
ENVELOPE_KEYS: Final = (
    "event",
    "data",
    "source",
    "target",
    "operation",
    "token",
    "requireAck",
    "timestamp",
    "metadata",
)

#: Broker token claims in the order the original signs them (no ``iat``).
TOKEN_CLAIMS: Final = (
    "id",
    "type",
    "version",
    "source",
    "target",
    "operation",
    "exp",
    "stateful",
    "stateKey",
    "rateLimitExempt",
    "authBypass",
    "data",
    "metadata",
)
TOKEN_TYPE: Final = "broker"
TOKEN_VERSION: Final = "1.0"

#: Registry entries live this long (seconds) ...
REGISTRY_TTL_S: Final = 60
#: ... and are refreshed this often (seconds).
REGISTRY_REFRESH_S: Final = 30
#: The ``operation`` of a token made to log in (open a connection, authenticate an HTTP call).
#: A token signed for a message names its event instead, and is never a login.
LOGIN_OPERATION: Final = "connect"
#: Token ids longer than this are refused or ignored (ours and the original's are 32 hex digits).
MAX_TOKEN_ID_LEN: Final = 256
#: How long a revocation record is kept (the original's SETEX 86400).
REVOCATION_TTL_S: Final = 86_400

#: The 19 services the original knows, with the ports its certificate script prints.
KNOWN_SERVICES: Final[dict[str, int]] = {
    "exprsn-ca": 3000,
    "exprsn-auth": 3001,
    "exprsn-spark": 3002,
    "exprsn-timeline": 3004,
    "exprsn-prefetch": 3005,
    "exprsn-moderator": 3006,
    "exprsn-filevault": 3007,
    "exprsn-gallery": 3008,
    "exprsn-live": 3009,
    "exprsn-bridge": 3010,
    "exprsn-nexus": 3011,
    "exprsn-pulse": 3012,
    "exprsn-vault": 3013,
    "exprsn-herald": 3014,
    "exprsn-setup": 3015,
    "exprsn-workflow": 3017,
    "exprsn-payments": 3018,
    "exprsn-atlas": 3019,
    "exprsn-svr": 5001,
}

#: Stream of the durable messages for one service: ``ipc:stream:<service>`` (also the
#: channel name under which the Bridge hands a stream entry to a socket).
STREAM_PREFIX: Final = "ipc:stream:"

#: What an IPC worker's bridge transport declares (Socket.IO ``auth.protocol``, and the
#: ``protocol`` query parameter that selects the Bridge's worker lane): it exchanges raw
#: signed envelopes with the Bridge.
ENVELOPE_PROTOCOL: Final = "exprsn-ipc/1"
#: Envelope metadata key of a message's own-key signature (``certs/identity.py``):
#: ``"<signing service>:<credential serial, hex>.<Ed25519 signature of the broker token>"``.
CREDENTIAL_META_KEY: Final = "credential"
#: Handlers' ``meta.trust``: what vouches for a message's ``source``.
TRUST_CREDENTIAL: Final = "credential"
TRUST_SHARED_KEY: Final = "shared-key"
TRUST_BYPASS: Final = "bypass"
TRUST_LEVELS: Final = frozenset({TRUST_CREDENTIAL, TRUST_SHARED_KEY, TRUST_BYPASS})
#: Identity at the connection (the worker lane of an embedded Bridge): a worker asks with
#: ``auth.identity = "connection"``; granted, the CONNECT packet says ``{"identity": "connection",
#: "trust": ...}`` and the worker's envelopes go without a broker token. The Bridge checks
#: ``source`` against the connection and ``metadata.trust`` against its trust level;
#: ``metadata.messageId`` names the message where a token id would (claims, acks).
IDENTITY_OPTION: Final = "identity"
IDENTITY_AT_CONNECTION: Final = "connection"
MESSAGE_ID_KEY: Final = "messageId"
TRUST_KEY: Final = "trust"

#: Envelopes per Socket.IO batch between IPC workers and the Bridge (``ipc:publish_batch``,
#: ``ipc:messages``), and about this many bytes: far below either side's websocket limit.
BATCH_MAX_ITEMS: Final = 256
BATCH_MAX_BYTES: Final = 512 * 1024


def batch_byte_cap(max_message_bytes: int) -> int:
    """Bytes at which a batch closes: it then holds under twice the message limit, even
    after JSON escaping well inside the Bridge's websocket limit (4 x the message limit)."""
    return min(BATCH_MAX_BYTES, max_message_bytes)


def channel_for(target: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The pub/sub channel a message for ``target`` is published on."""
    return f"{namespace}:{target}"


def full_service_name(name: str) -> str:
    """``timeline`` → ``exprsn-timeline``; full names are returned unchanged."""
    return name if name.startswith("exprsn-") else f"exprsn-{name}"


def short_service_name(name: str) -> str:
    """``exprsn-timeline`` → ``timeline``; short names are returned unchanged."""
    return name.removeprefix("exprsn-")
