"""Where the Bridge's bus lives: embedded (in memory, the default) or Redis."""

from __future__ import annotations

from exprsn_ipc.bridge.backend.base import (
    BridgeBackend,
    MemoryBackend,
    create_backend,
)

__all__ = [
    "BridgeBackend",
    "MemoryBackend",
    "create_backend",
]
