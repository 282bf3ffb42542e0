"""Which replica of a service takes a call: the power of two choices over their load.

The caller keeps each target's instance records (refreshed at most every
:data:`REFRESH_S`), counts the calls it has outstanding at each replica, and adds
the load each replica last reported (its handlers in flight). For every call it
picks two replicas at random and takes the less loaded one; the others follow in
order of load, for failing over when the first is known not to have received the
call (nobody subscribed to its channel: it has gone).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

from exprsn_ipc.errors import IPCError, NoReceiversError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.instances import valid_instance

__all__ = ["REFRESH_S", "ReplicaChooser"]

log = get_logger("exprsn_ipc.worker")

#: Seconds a target's instance list is used before it is read again. A replica that
#: leaves waits longer than this before it stops receiving (``IPC_LEAVE_GRACE``).
REFRESH_S: Final = 1.0

Fetch = Callable[[str], Awaitable[list[dict[str, Any]]]]


class ReplicaChooser:
    """Chooses replicas for one caller; ``fetch(service)`` reads a service's instance records."""

    def __init__(self, fetch: Fetch, *, refresh_s: float = REFRESH_S) -> None:
        self._fetch = fetch
        self.refresh_s = refresh_s
        #: service -> (read at, {instance id: reported load})
        self._known: dict[str, tuple[float, dict[str, int]]] = {}
        self._reading: dict[str, asyncio.Future[dict[str, int]]] = {}
        #: Calls this caller has outstanding, per instance.
        self.outstanding: Counter[str] = Counter()

    async def candidates(self, service: str) -> list[str]:
        """Instance ids of ``service`` to try, best first; ``[]``: it has none (use its service channel)."""
        replicas = await self._replicas(service)
        if len(replicas) <= 1:
            return list(replicas)

        def load(instance: str) -> int:
            return self.outstanding[instance] + replicas[instance]

        first, second = random.sample(list(replicas), 2)
        best = first if load(first) <= load(second) else second
        return [best, *sorted((i for i in replicas if i != best), key=load)]

    async def send(
        self,
        service: str,
        publish: Callable[[str | None], Awaitable[tuple[int, str]]],
        *,
        skip: Collection[str] = (),
    ) -> str | None:
        """Publish one call to the best replica of ``service`` that receives it.

        ``publish(instance)`` sends the call to that replica (``None``: to the service
        channel) and returns ``(receivers, channel)``. The replica that took it counts
        the call as outstanding until :meth:`finished`; ``None`` is returned when the
        service channel took it (no replica known, or none left).

        Raises:
            NoReceiversError: nobody received the call anywhere.
        """
        for instance in [i for i in await self.candidates(service) if i not in skip]:
            receivers, _ = await publish(instance)
            if receivers:
                self.outstanding[instance] += 1
                return instance
            # Nobody subscribed to its channel: it has gone, and the call did not reach it.
            self.gone(service, instance)
        receivers, channel = await publish(None)
        if not receivers:
            raise NoReceiversError(f"no service is listening on {channel}")
        return None

    def finished(self, instance: str | None) -> None:
        """A call :meth:`send` gave to ``instance`` is over (answered, failed or timed out)."""
        if instance is None:
            return
        self.outstanding[instance] -= 1
        if self.outstanding[instance] <= 0:
            del self.outstanding[instance]

    def gone(self, service: str, instance: str) -> None:
        """``instance`` did not receive a call (nobody listens on its channel): stop choosing it."""
        known = self._known.get(service)
        if known is not None:
            known[1].pop(instance, None)

    async def _replicas(self, service: str) -> dict[str, int]:
        known = self._known.get(service)
        if known is not None and time.monotonic() - known[0] < self.refresh_s:
            return known[1]
        reading = self._reading.get(service)
        if reading is not None:  # one read per service at a time, shared by the callers waiting
            return await asyncio.shield(reading)
        future: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        self._reading[service] = future
        try:
            records = await self._fetch(service)
            replicas = {
                str(r["id"]): _load(r) for r in records if isinstance(r, dict) and valid_instance(r.get("id"), service)
            }
        except IPCError as exc:
            # Discovery failed: keep what was known; the call may still reach the service channel.
            log.warning("could not read the replicas of %s: %s", service, exc)
            replicas = known[1] if known is not None else {}
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters see it through the shield
            raise
        finally:
            self._reading.pop(service, None)
        self._known[service] = (time.monotonic(), replicas)
        future.set_result(replicas)
        return replicas


def _load(record: dict[str, Any]) -> int:
    value = record.get("inFlight")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
