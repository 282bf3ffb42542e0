"""Atomic fixed-window rate limiting (DESIGN fix 6).

A window starts at a multiple of ``window_ms`` and holds at most ``max_requests``
hits per key; unlike the original, accepted requests never extend the window and
there is no client-side exemption. Backends: in memory (one process) and Redis
(``exprsn_ipc.transport.redis.transport``), behind :class:`RateLimiter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["MemoryRateLimiter", "RateDecision", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one hit: whether it is allowed, and the window's state."""

    allowed: bool
    count: int
    limit: int
    reset_ms: int  # milliseconds until the current window ends

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)


@runtime_checkable
class RateLimiter(Protocol):
    """Counts hits per key in fixed windows."""

    max_requests: int
    window_ms: int

    async def hit(self, key: str, *, cost: int = 1) -> RateDecision:
        """Count ``cost`` hits for ``key`` at once and say whether the count is within the limit."""
        ...

    async def snapshot(self) -> dict[str, int]:
        """Hits per key in the current window (for stats)."""
        ...


class MemoryRateLimiter:
    """A per-process fixed-window limiter; the event loop makes each hit atomic."""

    def __init__(self, *, max_requests: int, window_ms: int) -> None:
        if max_requests <= 0 or window_ms <= 0:
            raise ValueError("max_requests and window_ms must be positive")
        self.max_requests = max_requests
        self.window_ms = window_ms
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window index, count)

    def _now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def hit(self, key: str, *, cost: int = 1) -> RateDecision:
        now = self._now_ms()
        index = now // self.window_ms
        current, count = self._windows.get(key, (index, 0))
        if current != index:
            count = 0
        count += cost
        self._windows[key] = (index, count)
        reset = (index + 1) * self.window_ms - now
        if len(self._windows) > 10_000:
            self._prune(index)
        return RateDecision(count <= self.max_requests, count, self.max_requests, reset)

    async def snapshot(self) -> dict[str, int]:
        index = self._now_ms() // self.window_ms
        return {k: c for k, (i, c) in self._windows.items() if i == index}

    def _prune(self, index: int) -> None:
        for key in [k for k, (i, _) in self._windows.items() if i != index]:
            del self._windows[key]
