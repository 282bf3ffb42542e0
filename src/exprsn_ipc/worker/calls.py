"""Request/reply for one worker: one replica of the target takes each call.

A call is published on the channel of one replica of the target, chosen by load
(:class:`~exprsn_ipc.worker.replicas.ReplicaChooser`). When nobody received it there
(that replica has gone), the next one is tried at once: the call cannot have run.
Once a replica has received a call it is never sent again behind the caller's back:
a call that received no answer in time raises :class:`RequestTimeoutError` (it may
have run), unless the caller says it is ``idempotent``, when it is sent once more to
another replica. A target without instance records (a Node service) gets the call on
its service channel, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from exprsn_ipc.errors import RequestTimeoutError
from exprsn_ipc.protocol.envelope import Envelope
from exprsn_ipc.protocol.instances import INSTANCE_KEY, REPLY_TO_KEY
from exprsn_ipc.worker.replicas import ReplicaChooser
from exprsn_ipc.worker.replies import PendingRequests, expire

__all__ = ["Calls"]


@dataclass(slots=True)
class _Call:
    """One call and the replicas it was sent to (never sent to one twice)."""

    target: str
    event: str
    data: Any
    timeout: float
    operation: str
    metadata: dict[str, Any]
    tried: set[str] = field(default_factory=set)


#: ``publish(envelope) -> (receivers, channel)``; -1 receivers: buffered by the transport (counts as received).
Publish = Callable[[Envelope], Awaitable[tuple[int, str]]]


class Calls:
    """Sends requests for one worker and waits for their replies."""

    def __init__(
        self,
        *,
        instance_id: str,
        chooser: ReplicaChooser,
        pending: PendingRequests,
        build_envelope: Callable[..., Envelope],
        publish: Publish,
    ) -> None:
        self.instance_id = instance_id
        self.chooser = chooser
        self._pending = pending
        self._build = build_envelope
        self._publish = publish

    async def request(
        self,
        target: str,
        event: str,
        data: Any,
        *,
        timeout: float,
        operation: str,
        metadata: dict[str, Any] | None,
        idempotent: bool = False,
    ) -> Any:
        """Send one call and return the reply's result (see the module docstring)."""
        call = _Call(target, event, data, timeout, operation, metadata or {})
        if not idempotent:
            return await self._once(call)
        try:
            return await self._once(call)
        except RequestTimeoutError:
            return await self._once(call)  # once more, to a replica not tried yet

    async def _once(self, call: _Call) -> Any:
        request_id, future = self._pending.open(call.target)
        meta = {**call.metadata, "requestId": request_id, REPLY_TO_KEY: self.instance_id}

        async def publish(instance: str | None) -> tuple[int, str]:
            routed = meta if instance is None else {**meta, INSTANCE_KEY: instance}
            envelope = self._build(call.event, call.data, target=call.target, operation=call.operation, metadata=routed)
            return await self._publish(envelope)

        instance: str | None = None
        try:
            instance = await self.chooser.send(call.target, publish, skip=call.tried)
            if instance is not None:
                call.tried.add(instance)
            timer = asyncio.get_running_loop().call_later(
                call.timeout,
                expire,
                future,
                f"{call.target} did not answer {call.event!r} within {call.timeout:g} s; it may have handled it, "
                "so it was not sent again (pass idempotent=True to retry on another replica)",
            )
            try:
                return await future
            finally:
                timer.cancel()
        finally:
            self._pending.close(request_id)
            self.chooser.finished(instance)
