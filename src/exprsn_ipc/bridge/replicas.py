"""The replicas behind the Bridge's sockets: their instance records, and choosing one for a client's call.

A worker on the bridge transport names its instance in ``auth.entry.instance``; the
Bridge subscribes the socket to that instance's channel too, keeps the instance
record in the backend (embedded, or Redis where every Bridge and Redis worker sees
it) fresh every ``INSTANCE_HEARTBEAT_S``, and removes it when the worker leaves
(``ipc:leave``) or its socket goes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from exprsn_ipc.bridge.connection import Connection
from exprsn_ipc.errors import IPCError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.protocol.instances import INSTANCE_HEARTBEAT_S
from exprsn_ipc.worker.replicas import ReplicaChooser

if TYPE_CHECKING:
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["BridgeReplicas"]

log = get_logger("exprsn_ipc.bridge")


class BridgeReplicas:
    """Instance records of the Bridge's sockets, and a chooser for calls the Bridge makes."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.chooser = ReplicaChooser(self.bridge.backend.instances)
        self._task: asyncio.Task[None] | None = None

    def record(self, conn: Connection) -> dict[str, Any]:
        return {
            "id": conn.instance,
            "service": conn.service,
            "hostname": conn.record.get("hostname"),
            "address": conn.peer,  # as the Bridge sees it
            "pid": conn.record.get("pid"),
            "version": conn.record.get("version"),
            "transport": "bridge",
            "bridge": self.bridge.worker.instance_id,
            "inFlight": 0,
            "registered": conn.connected,
        }

    async def joined(self, conn: Connection) -> None:
        if conn.instance is not None:
            await self.bridge.backend.register_instance(conn.service, self.record(conn))

    async def left(self, conn: Connection) -> None:
        """The worker leaves (``ipc:leave``) or its socket went: it is chosen no more."""
        instance, conn.instance = conn.instance, None
        if instance is not None:
            try:
                await self.bridge.backend.unregister_instance(conn.service, instance)
            except IPCError as exc:
                log.warning("could not remove the instance record of %s: %s", instance, exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name="bridge-instance-heartbeat")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(INSTANCE_HEARTBEAT_S)
            for conn in list(self.bridge.connections.values()):
                if conn.instance is None:
                    continue
                try:
                    await self.bridge.backend.register_instance(conn.service, self.record(conn))
                except Exception as exc:  # the loop outlives a bad moment of the backend
                    log.warning("instance heartbeat failed: %s", exc)
                    break
