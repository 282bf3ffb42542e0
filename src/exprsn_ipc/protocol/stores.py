"""Where broker-token revocations and stateful tokens' state are kept.

The interfaces, and the in-process stores the memory transport and the bridge
transport use; Redis has its own (``transport/redis/stores.py``) on the original's keys.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

import orjson

from exprsn_ipc.protocol.envelope import dumps

__all__ = ["MemoryRevocationStore", "MemoryStateStore", "RevocationStore", "StateStore"]


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
