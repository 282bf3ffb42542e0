"""CRUD resources a worker serves (``@ipc.resource("posts")``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from exprsn_ipc.errors import EnvelopeError, ResourceNotFoundError
from exprsn_ipc.protocol.envelope import validate_resource_name
from exprsn_ipc.protocol.events import crud_event
from exprsn_ipc.worker.handlers import MessageMeta, call_handler

__all__ = ["ResourceNotFoundError", "ResourceTable"]

OPERATIONS = ("create", "read", "update", "delete")


class ResourceTable:
    """Maps resource names to objects with ``create/read/update/delete`` methods."""

    def __init__(self) -> None:
        self._resources: dict[str, Any] = {}
        self.fallback: Callable[[str], Any] | None = None

    def names(self) -> list[str]:
        return sorted(self._resources)

    def serves_anything(self) -> bool:
        return bool(self._resources) or self.fallback is not None

    def add(self, name: str, provider: Any) -> Any:
        validate_resource_name(name)
        instance = provider() if inspect.isclass(provider) else provider
        if not any(callable(getattr(instance, op, None)) for op in OPERATIONS):
            raise TypeError(f"resource {name!r} has none of {', '.join(OPERATIONS)}")
        self._resources[name] = instance
        return instance

    def decorator(self, name: str) -> Callable[[Any], Any]:
        def register(provider: Any) -> Any:
            self.add(name, provider)
            return provider

        return register

    def lookup(self, name: str) -> Any:
        instance = self._resources.get(name)
        if instance is None and self.fallback is not None:
            instance = self.fallback(name)
        if instance is None:
            raise ResourceNotFoundError(f"resource {name!r} is not served here")
        return instance

    def handler(self, op: str) -> Callable[[Any, MessageMeta | None], Any]:
        async def serve(data: Any, meta: MessageMeta | None) -> Any:
            if not isinstance(data, dict) or not isinstance(data.get("resource"), str):
                raise EnvelopeError(f"{crud_event(op)} needs an object with a 'resource' name")
            instance = self.lookup(data["resource"])
            method = getattr(instance, op, None)
            if not callable(method):
                raise ResourceNotFoundError(f"resource {data['resource']!r} does not support {op}")
            if op == "create":
                return await call_handler(method, data.get("data"), meta)
            if op == "read":
                query = data.get("query", data.get("id"))
                return await call_handler(method, query, meta)
            if op == "update":
                return await call_handler(method, data.get("id", data.get("query")), data.get("data"), meta)
            return await call_handler(method, data.get("id", data.get("query")), meta)

        return serve
