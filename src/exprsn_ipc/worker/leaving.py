"""How a replica leaves without failing a call (rolling restarts).

The instance record goes first, so that callers stop choosing this replica; they
read replica lists at most every second, and a call that reaches a replica no
longer listening fails over at once. What could still be lost is a call on its way
at the moment receiving stops, so receiving goes on until no call has arrived on the
replica's own channel for :data:`QUIET_S`, within the grace (``IPC_LEAVE_GRACE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

from exprsn_ipc.transport.base import Transport

__all__ = ["QUIET_S", "leave"]

#: A leaving replica stops receiving once no call has reached it for this long.
QUIET_S: Final = 0.2


async def leave(transport: Transport, *, grace: float, last_call_at: Callable[[], float]) -> None:
    """Deregister from ``transport``, then wait (at most ``grace`` s) until calls stop arriving."""
    with contextlib.suppress(Exception):
        await transport.leave()
    deadline = time.monotonic() + grace
    while (now := time.monotonic()) < deadline:
        quiet = now - last_call_at()
        if quiet >= QUIET_S:
            return
        await asyncio.sleep(min(QUIET_S - quiet, deadline - now))
