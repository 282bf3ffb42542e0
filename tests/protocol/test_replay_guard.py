"""The in-memory replay guard: each token id once until it expires, bounded in entries."""

from __future__ import annotations

import time

from exprsn_ipc.protocol.stores import MemoryReplayGuard


def test_an_id_is_accepted_once_until_it_expires() -> None:
    guard = MemoryReplayGuard(max_entries=10)
    now = time.time()
    assert guard.first_use("a", now + 60) is True
    assert guard.first_use("a", now + 60) is False
    # An entry whose token has expired is forgotten: the id is new again.
    assert guard.first_use("old", now - 1) is True
    assert guard.first_use("old", now + 60) is True
    assert guard.first_use("old", now + 60) is False


def test_the_oldest_ids_leave_first_past_the_cap() -> None:
    guard = MemoryReplayGuard(max_entries=3)
    now = time.time()
    for token_id in "abcd":
        assert guard.first_use(token_id, now + 60)
    assert len(guard) == 3
    assert guard.first_use("b", now + 60) is False  # still remembered
    assert guard.first_use("a", now + 60) is True  # forgotten first, so new again
    for n in range(10_000):
        guard.first_use(str(n), now + 60)
    assert len(guard) == 3


def test_a_guard_of_no_entries_remembers_nothing() -> None:
    guard = MemoryReplayGuard(max_entries=0)
    assert guard.first_use("a", time.time() + 60) and guard.first_use("a", time.time() + 60)
    assert len(guard) == 0
