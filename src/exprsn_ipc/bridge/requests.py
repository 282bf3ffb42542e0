"""Requests the Bridge makes on behalf of Socket.IO clients: ``ipc:request``, CRUD and JSONLex.

A request to a service is signed as the client's own service, published on the bus,
and answered when the service's ``ipc:reply`` comes back (``delivery.py`` hands it to
:meth:`ClientRequests.resolve_reply`). CRUD on resources no service claims, and
JSONLex, are served by the Bridge itself, without a round trip.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from exprsn_ipc import jsonlex
from exprsn_ipc.bridge.connection import Identity
from exprsn_ipc.errors import RequestTimeoutError
from exprsn_ipc.protocol.constants import BRIDGE_ALIAS, BRIDGE_SERVICE, channel_for
from exprsn_ipc.protocol.envelope import Envelope, validate_event_name, validate_service_name
from exprsn_ipc.protocol.events import BusEvent, crud_operation
from exprsn_ipc.protocol.instances import INSTANCE_KEY
from exprsn_ipc.worker.handlers import MessageMeta
from exprsn_ipc.worker.replies import settle_reply
from exprsn_ipc.worker.resources import ResourceNotFoundError

if TYPE_CHECKING:
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["ClientRequests"]


class ClientRequests:
    """The requests in flight for the Bridge's clients, by ``requestId``."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._pending: dict[str, asyncio.Future[Any]] = {}

    def close(self) -> None:
        """Fail the requests still waiting (the Bridge is stopping)."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RequestTimeoutError("the Bridge is shutting down"))

    async def request_as(
        self,
        identity: Identity,
        target: str,
        event: str,
        data: Any,
        *,
        operation: str = "request",
        timeout: float | None = None,
    ) -> Any:
        """Request/reply on behalf of a Socket.IO client (its service is the source)."""
        validate_event_name(event)
        validate_service_name(target)  # refuses "broadcast": a request needs one target
        if target in (BRIDGE_SERVICE, BRIDGE_ALIAS):
            return await self.serve_locally(event, data, source=identity.service)
        self.bridge.policy.check_call(identity.service, target, event, request=True, data=data)
        request_id = uuid.uuid4().hex
        signer, chooser = self.bridge.signer(identity.service), self.bridge.replicas.chooser

        async def publish(instance: str | None) -> tuple[int, str]:
            # One replica, chosen by load as workers choose (worker/replicas.py).
            metadata = (
                {"requestId": request_id} if instance is None else {"requestId": request_id, INSTANCE_KEY: instance}
            )
            envelope = signer.sign_envelope(event, data, target=target, operation=operation, metadata=metadata)
            channel = channel_for(target if instance is None else instance)
            return await self.bridge.route(identity.service, target, envelope.encode(), channel=channel), channel

        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        chosen: str | None = None
        try:
            chosen = await chooser.send(target, publish)
            wait = self.bridge.settings.ipc_request_timeout if timeout is None else timeout
            try:
                return await asyncio.wait_for(future, wait)
            except TimeoutError:
                raise RequestTimeoutError(f"{target} did not answer {event!r} within {wait:g} s") from None
        finally:
            self._pending.pop(request_id, None)
            chooser.finished(chosen)

    def resolve_reply(self, envelope: Envelope) -> bool:
        """Settle a request made by :meth:`request_as`; False if it is not ours."""
        request_id = envelope.metadata.get("requestId")
        future = self._pending.get(request_id) if isinstance(request_id, str) else None
        if future is None:
            return False
        settle_reply(future, envelope.payload)
        return True

    async def serve_locally(self, event: str, data: Any, *, source: str) -> Any:
        """CRUD on the built-in store and JSONLex for ``source``, without a bus round trip."""
        self.bridge.policy.check_call(source, BRIDGE_SERVICE, event, request=True, data=data)
        if event == BusEvent.JSONLEX_EXECUTE:
            if not isinstance(data, dict):
                raise TypeError(f"{BusEvent.JSONLEX_EXECUTE} needs {{expression, context}}")
            context = data.get("context") or {}
            return jsonlex.evaluate(data.get("expression"), context)
        operation = crud_operation(event)
        if operation is None:
            raise ResourceNotFoundError(f"the Bridge does not serve {event!r}")
        # What a handler would learn from the bus: the caller (the store's items belong to it).
        request = Envelope(event=event, source=source, target=BRIDGE_SERVICE, data=data, operation="crud")
        meta = MessageMeta(source=source, token={}, channel="", message=request, target=BRIDGE_SERVICE, event=event)
        return await self.bridge.worker.resources.handler(operation)(data, meta)

    async def crud_target(self, resource: str) -> str:
        """The service that registered ``resource`` (the first to, should two have), or the Bridge's own store."""
        entries = await self.bridge.backend.services()
        entries.sort(key=_registered)
        for entry in entries:
            resources = entry.get("resources")
            name = entry.get("name")
            if (
                isinstance(resources, list)
                and resource in resources
                and isinstance(name, str)
                and name != BRIDGE_SERVICE
            ):
                return name
        return BRIDGE_SERVICE


def _registered(entry: dict[str, Any]) -> int:
    registered = entry.get("registered")
    return registered if isinstance(registered, int) else 0
