"""Every Redis key, pub/sub channel and Lua script of exprsn-ipc, defined once.

The names are the original's where it has them (ioredis' ``ipc:data:`` key prefix,
the IPCRouter's rate-limit keys), so Node workers on the same Redis read and write
the same keys. ``STREAM_PREFIX`` is also the channel name under which the Bridge hands
a durable entry to a worker, so it lives in :mod:`exprsn_ipc.protocol.constants`.
"""

from __future__ import annotations

from typing import Final

from exprsn_ipc.protocol.constants import STREAM_PREFIX

__all__ = [
    "CLAIM_PREFIX",
    "DLQ_PREFIX",
    "DONE_PREFIX",
    "INSTANCES_PREFIX",
    "PRUNE_SCRIPT",
    "RATE_LIMIT_PREFIX",
    "RATE_LIMIT_SCRIPT",
    "REFRESH_SCRIPT",
    "REGISTRY_PREFIX",
    "REPLAY_PREFIX",
    "REPLAY_SCRIPT",
    "REVOCATION_CHANNEL",
    "STATE_KEY_PREFIX",
    "STORE_PREFIX",
    "STREAM_PREFIX",
    "TOKEN_KEY_PREFIX",
    "UNREGISTER_SCRIPT",
    "dlq_key",
    "done_key",
    "instances_key",
    "registry_key",
    "stream_key",
]

# Keys ------------------------------------------------------------------------------

#: Registry records, one per service (the full name after ioredis' ``ipc:data:`` prefix).
REGISTRY_PREFIX: Final = "ipc:data:services:"
#: Token metadata / revocation records, where the original's ``isRevoked`` reads them.
TOKEN_KEY_PREFIX: Final = "ipc:data:token:"
#: State of stateful tokens.
STATE_KEY_PREFIX: Final = "ipc:data:state:"
#: Default key prefix of the Redis rate limiter (the original IPCRouter's).
RATE_LIMIT_PREFIX: Final = "ipc:router:ratelimit:"
#: The dead letters of a service: ``ipc:dlq:{<service>}``.
DLQ_PREFIX: Final = "ipc:dlq:"
#: Durable messages a service has handled, by token id, shared by its replicas (24 h).
DONE_PREFIX: Final = "ipc:durable:done:"
#: The instance records of a service's replicas: a hash, one field per instance id.
INSTANCES_PREFIX: Final = "ipc:data:instances:"
#: Claims shared by replicas (a shared handler's event, a request that reached every replica).
CLAIM_PREFIX: Final = "ipc:claim:"
#: The Bridges' built-in CRUD store, hash-tagged so that its multi-key transactions stay
#: in one Cluster slot: ``<prefix>items:<resource>`` (hash id -> item),
#: ``<prefix>meta:<resource>`` (hash id -> owner and size), ``<prefix>usage`` (hash owner ->
#: bytes), ``<prefix>resources`` (set) and ``<prefix>ids`` (counter).
STORE_PREFIX: Final = "ipc:{store}:"
#: Token ids of envelopes the Bridges accepted, each until its token expires (replay guard).
REPLAY_PREFIX: Final = "ipc:replay:"

# Channels --------------------------------------------------------------------------

#: Python workers announce revocations here so peers update their caches at once.
REVOCATION_CHANNEL: Final = "ipc:data:revocations"


def registry_key(service: str) -> str:
    """``ipc:data:services:<service>``: the registry record of ``service``."""
    return f"{REGISTRY_PREFIX}{service}"


def instances_key(service: str) -> str:
    """``ipc:data:instances:<service>``: the instance records of ``service``'s replicas."""
    return f"{INSTANCES_PREFIX}{service}"


# A service's stream, dead letters and done markers share the hash tag ``{<service>}``:
# in a Redis Cluster they live in one slot, so the scripts and transactions that touch
# several of them (dead-lettering, replaying, acking with a marker) stay valid there.


def stream_key(service: str) -> str:
    """``ipc:stream:{<service>}``: where durable messages for ``service`` wait."""
    return f"{STREAM_PREFIX}{{{service}}}"


def done_key(service: str, token_id: str) -> str:
    """``ipc:durable:done:{<service>}:<token id>``: ``service`` has handled that durable message."""
    return f"{DONE_PREFIX}{{{service}}}:{token_id}"


def dlq_key(service: str) -> str:
    """``ipc:dlq:{<service>}``: the dead letters of ``service``."""
    return f"{DLQ_PREFIX}{{{service}}}"


# Scripts ---------------------------------------------------------------------------

# Delete a registry record only if it is still the one the caller wrote (ARGV[1]): a
# replica of the same service, or another Bridge, may have replaced it since.
UNREGISTER_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# INCRBY, and set the expiry only when this INCRBY created the key: later hits never
# extend the window (the original refreshed PEXPIRE on every hit, DESIGN fix 6).
RATE_LIMIT_SCRIPT: Final = """
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if n == tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""

# Reset the idle time of the entries this consumer is still working on, and only
# of those it still owns (another consumer may have claimed one meanwhile).
# JUSTID: the delivery counter is not incremented. Returns the ids still owned.
REFRESH_SCRIPT: Final = """
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    owned[#owned + 1] = ARGV[i]
  end
end
return owned
"""

# Remove a consumer only if nothing is pending for it (DELCONSUMER drops its pending
# entries, so checking and deleting must be one atomic step). -1: it has some.
PRUNE_SCRIPT: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

# Move one dead letter back to its service's stream, atomically: only the caller
# whose XDEL removed it appends it, so concurrent replays never double it.
REPLAY_SCRIPT: Final = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'envelope', ARGV[2])
return 1
"""
