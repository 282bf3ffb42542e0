"""Byte budgets per service for what the Bridge keeps on a client's behalf for a while.

Counts alone do not bound memory when each item can be large; a :class:`ByteBudget`
charges each item its size plus a fixed overhead, and forgets it when it expires.
"""

from __future__ import annotations

import heapq
import time
from typing import Final

from exprsn_ipc.errors import StoreFullError

__all__ = ["ITEM_OVERHEAD", "ByteBudget"]

#: Bytes charged per item besides its own size (dict slot, strings, expiry).
ITEM_OVERHEAD: Final = 96


class ByteBudget:
    """At most ``limit`` bytes of live items per service; each item leaves at its expiry."""

    def __init__(self, limit: int, *, what: str) -> None:
        self.limit = limit
        self.what = what
        self._used: dict[str, int] = {}
        self._expiries: dict[str, list[tuple[float, int]]] = {}

    def charge(self, service: str, size: int, *, ttl: float) -> None:
        """Count an item of ``size`` bytes for ``service`` for ``ttl`` seconds.

        Raises:
            StoreFullError: ``service`` would exceed its budget; nothing is charged.
        """
        now = time.monotonic()
        self._expire(service, now)
        cost = size + ITEM_OVERHEAD
        used = self._used.get(service, 0)
        if used + cost > self.limit:
            raise StoreFullError(f"{service} holds {used} bytes of {self.what} already (the limit is {self.limit})")
        self._used[service] = used + cost
        heapq.heappush(self._expiries.setdefault(service, []), (now + ttl, cost))

    def used(self, service: str) -> int:
        self._expire(service, time.monotonic())
        return self._used.get(service, 0)

    def _expire(self, service: str, now: float) -> None:
        heap = self._expiries.get(service)
        while heap and heap[0][0] <= now:
            _, cost = heapq.heappop(heap)
            self._used[service] -= cost
        if heap is not None and not heap:
            del self._expiries[service]
            self._used.pop(service, None)
