"""The IPC worker: one per service process, composed of a sender, a receiver and its handlers."""

from __future__ import annotations

from exprsn_ipc.worker.core import (
    HANDLER_BUCKETS,
    DurationHistogram,
    EmitResult,
    IPCWorker,
    WorkerStats,
)

__all__ = [
    "HANDLER_BUCKETS",
    "DurationHistogram",
    "EmitResult",
    "IPCWorker",
    "WorkerStats",
]
