"""Where broker-token revocations, stateful tokens' state and seen token ids are kept.

The interfaces, and the in-process stores the memory transport and the bridge
transport use; Redis has its own (``transport/redis/stores.py``) on the original's keys.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Protocol, runtime_checkable

import orjson

from exprsn_ipc.protocol.envelope import dumps

__all__ = [
    "MemoryReplayGuard",
    "MemoryRevocationStore",
    "MemoryStateStore",
    "ReplayGuard",
    "RevocationStore",
    "StateStore",
]


@runtime_checkable
class RevocationStore(Protocol):
    """Where revocations are kept. ``is_revoked`` is local: no I/O per message."""

    async def revoke(self, token_id: str, *, ttl: int) -> bool: ...

    def is_revoked(self, token_id: str) -> bool: ...


@runtime_checkable
class StateStore(Protocol):
    """State attached to stateful tokens."""

    async def set_state(self, token_id: str, state: Any) -> None: ...

    async def get_state(self, token_id: str) -> Any: ...

    async def delete_state(self, token_id: str) -> bool: ...


@runtime_checkable
class ReplayGuard(Protocol):
    """The token ids of accepted envelopes, each kept until its token expires, so an
    exact replay of an envelope is recognised."""

    async def claim(self, tokens: list[tuple[str, float]]) -> list[bool]:
        """For each ``(token id, expiry in epoch seconds)``: True the first time, False for a replay."""
        ...


class MemoryReplayGuard:
    """Seen token ids in this process.

    Bounded by ``max_entries`` (about 150 bytes each): past it the oldest are forgotten
    first, so under a flood an old envelope might be accepted twice, never a fresh
    one refused. Each call costs O(1) (amortised): expired ids leave from the front.
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        # Insertion order is close to expiry order (most tokens share IPC_TOKEN_TTL).
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def first_use(self, token_id: str, expires: float) -> bool:
        """True and remembered the first time ``token_id`` is seen before ``expires``."""
        now = time.time()
        seen = self._seen
        known = seen.get(token_id)
        if known is not None and known > now:
            return False
        seen[token_id] = expires
        seen.move_to_end(token_id)
        while seen:
            oldest, until = next(iter(seen.items()))
            if until > now and len(seen) <= self.max_entries:
                break
            del seen[oldest]
        return True

    async def claim(self, tokens: list[tuple[str, float]]) -> list[bool]:
        return [self.first_use(token_id, expires) for token_id, expires in tokens]

    def __len__(self) -> int:
        return len(self._seen)


class MemoryRevocationStore:
    """Revocations kept in this process, each forgotten after its TTL."""

    def __init__(self) -> None:
        self._revoked: dict[str, float] = {}

    async def revoke(self, token_id: str, *, ttl: int) -> bool:
        self.add_local(token_id, ttl=ttl)
        return True

    def add_local(self, token_id: str, *, ttl: int) -> None:
        now = time.monotonic()
        self._revoked[token_id] = now + ttl
        if len(self._revoked) > 100_000:
            for key in [k for k, until in self._revoked.items() if until <= now]:
                del self._revoked[key]

    def is_revoked(self, token_id: str) -> bool:
        until = self._revoked.get(token_id)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._revoked[token_id]
            return False
        return True


class MemoryStateStore:
    """State of stateful tokens, kept in this process."""

    def __init__(self) -> None:
        self._state: dict[str, bytes] = {}

    async def set_state(self, token_id: str, state: Any) -> None:
        self._state[token_id] = dumps(state)

    async def get_state(self, token_id: str) -> Any:
        raw = self._state.get(token_id)
        return None if raw is None else orjson.loads(raw)

    async def delete_state(self, token_id: str) -> bool:
        return self._state.pop(token_id, None) is not None
