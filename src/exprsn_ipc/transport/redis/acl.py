"""Least-privilege Redis users: one per service, one for the Bridge (``exprsn-ipc redis acl``).

A service's user may use its own durable keys (stream, dead letters, done
markers), the shared registry and instance records, the token records and state,
claims and rate-limit counters, every ``ipc:*`` channel, and append (XADD only)
to any service's stream, which a durable emit needs. It may not read, consume,
acknowledge or delete another service's stream or dead letters. The Bridge's user
has every ``ipc:*`` key, since it consumes streams for its sockets' services.

No user gets ``CONFIG``: revocations are then learnt by the periodic scan (or
set ``notify-keyspace-events K$`` in redis.conf and the transport still only
reads it). The rules are Redis 7 ACL syntax (a selector for the XADD grant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from redis.exceptions import NoPermissionError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.transport.redis.keys import (
    CLAIM_PREFIX,
    DLQ_PREFIX,
    DONE_PREFIX,
    INSTANCES_PREFIX,
    RATE_LIMIT_PREFIX,
    REGISTRY_PREFIX,
    STATE_KEY_PREFIX,
    STREAM_PREFIX,
    TOKEN_KEY_PREFIX,
)
from exprsn_ipc.transport.redis.stores import glob_escape

__all__ = ["BRIDGE_USER", "AclUser", "acl_users", "refused"]

#: The Bridge's Redis user (also its CLIENT SETNAME).
BRIDGE_USER: Final = "exprsn-bridge"

# What every exprsn-ipc connection runs: data commands, pub/sub, scripts, MULTI,
# WAIT and naming itself; nothing that reconfigures or empties the server. The
# CLUSTER/COMMAND introspection is what redis-py's cluster client asks at start.
_COMMANDS: Final = (
    "-@all",
    "+@read",
    "+@write",
    "+@pubsub",
    "+@connection",
    "+@transaction",
    "+@scripting",
    "-@dangerous",
    "+wait",
    "+client|setname",
    "+cluster|slots",
    "+cluster|shards",
    "+cluster|nodes",
    "+command",
)
_SHARED_KEYS: Final = (
    REGISTRY_PREFIX,
    INSTANCES_PREFIX,
    TOKEN_KEY_PREFIX,
    STATE_KEY_PREFIX,
    CLAIM_PREFIX,
    RATE_LIMIT_PREFIX,
)


@dataclass(frozen=True)
class AclUser:
    """One Redis user: its name, password and rule tokens (``ACL SETUSER name <rules...>``)."""

    name: str
    password: str = field(repr=False)
    rules: tuple[str, ...]

    def setuser_args(self) -> list[str]:
        """The arguments of ``ACL SETUSER`` (password included)."""
        return [self.name, "reset", "on", f">{self.password}", *self.rules]

    def command(self) -> str:
        """One ``ACL SETUSER`` line for redis-cli."""
        return "ACL SETUSER " + " ".join(_quote(arg) for arg in self.setuser_args())

    def aclfile_line(self) -> str:
        """One line of a Redis ``aclfile``."""
        return "user " + " ".join([self.name, "on", f">{self.password}", *self.rules])


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in ' "()') else arg


def _channels(db: int) -> tuple[str, ...]:
    # PSUBSCRIBE patterns are compared literally, so the keyspace pattern names the db.
    return ("resetchannels", "&ipc:*", f"&__keyspace@{db}__:{glob_escape(TOKEN_KEY_PREFIX)}*")


def service_rules(service: str, *, db: int = 0) -> tuple[str, ...]:
    """The rule tokens of ``service``'s user."""
    tag = glob_escape(f"{{{service}}}")
    own = (f"~{STREAM_PREFIX}{tag}", f"~{DLQ_PREFIX}{tag}", f"~{DONE_PREFIX}{tag}:*")
    shared = tuple(f"~{glob_escape(prefix)}*" for prefix in _SHARED_KEYS)
    append_anywhere = f"(~{glob_escape(STREAM_PREFIX)}* +xadd)"
    return ("resetkeys", *own, *shared, *_channels(db), *_COMMANDS, append_anywhere)


def bridge_rules(*, db: int = 0) -> tuple[str, ...]:
    """The rule tokens of the Bridge's user: every ``ipc:*`` key (streams of its sockets, the store, replays)."""
    return ("resetkeys", "~ipc:*", *_channels(db), *_COMMANDS)


def acl_users(services: list[str], passwords: dict[str, str], *, bridge: bool = True, db: int = 0) -> list[AclUser]:
    """The users for ``services`` (and the Bridge), with the passwords given by user name."""
    users = [AclUser(name, passwords[name], service_rules(name, db=db)) for name in services]
    if bridge:
        users.append(AclUser(BRIDGE_USER, passwords[BRIDGE_USER], bridge_rules(db=db)))
    return users


def refused(exc: BaseException, what: str, *, user: str | None, describe: str) -> TransportError:
    """A clear TransportError for an error reply, naming the user when the ACL refused it."""
    if isinstance(exc, NoPermissionError):
        who = f"Redis user {user!r}" if user else "the default Redis user"
        return TransportError(
            f"{who} may not {what} on {describe} (NOPERM: {exc}); its ACL rules (exprsn-ipc redis acl) do not cover it"
        )
    return TransportError(f"{what} on {describe} failed: {exc}")
