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
from exprsn_ipc.errors import NoReceiversError, RequestTimeoutError
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
        #: The replica each pending call went to (its load counts while the call waits).
        self._chosen: dict[str, str] = {}

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
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(identity.service, target, event, data, operation, request_id)
            wait = self.bridge.settings.ipc_request_timeout if timeout is None else timeout
            try:
                return await asyncio.wait_for(future, wait)
            except TimeoutError:
                raise RequestTimeoutError(f"{target} did not answer {event!r} within {wait:g} s") from None
        finally:
            self._pending.pop(request_id, None)
            chosen = self._chosen.pop(request_id, None)
            if chosen is not None:
                outstanding = self.bridge.replicas.chooser.outstanding
                outstanding[chosen] -= 1
                if outstanding[chosen] <= 0:
                    del outstanding[chosen]

    async def _send(self, service: str, target: str, event: str, data: Any, operation: str, request_id: str) -> None:
        """Publish the call to one replica of ``target``, chosen by load, as workers do
        (``worker/calls.py``); its service channel when it has no replica known."""
        signer, chooser = self.bridge.signer(service), self.bridge.replicas.chooser
        for instance in await chooser.candidates(target):
            metadata = {"requestId": request_id, INSTANCE_KEY: instance}
            envelope = signer.sign_envelope(event, data, target=target, operation=operation, metadata=metadata)
            if await self.bridge.route(service, target, envelope.encode(), channel=channel_for(instance)):
                chooser.outstanding[instance] += 1
                self._chosen[request_id] = instance
                return
            chooser.gone(target, instance)  # nobody listens there: it has gone
        envelope = signer.sign_envelope(
            event, data, target=target, operation=operation, metadata={"requestId": request_id}
        )
        if not await self.bridge.route(service, target, envelope.encode()):
            raise NoReceiversError(f"no service is listening on {channel_for(target)}")

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
