"""The counters a worker keeps (read by ``/api/ipc/stats`` and ``/metrics``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HANDLER_BUCKETS", "DurationHistogram", "WorkerStats"]

#: Upper bounds (seconds) of the handler-duration histogram buckets.
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Distinct event names tracked per counter; further names count as "other".
MAX_EVENT_LABELS = 500


@dataclass
class DurationHistogram:
    """Bucket counts of handler durations; the last bucket is +Inf."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(HANDLER_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for index, bound in enumerate(HANDLER_BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1
                return
        self.counts[-1] += 1


def _label(counter: Counter[str] | dict[str, Any], event: str) -> str:
    # Event names come from peers: bound the label set so metrics stay small.
    return event if event in counter or len(counter) < MAX_EVENT_LABELS else "other"


@dataclass
class WorkerStats:
    """Counters a worker keeps; ``rejected`` is keyed by error code."""

    sent: int = 0
    received: int = 0
    handled: int = 0
    handler_errors: int = 0
    transport_errors: int = 0
    dropped: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    #: Messages the access policy denied here, by rule.
    policy_denied: Counter[str] = field(default_factory=Counter)
    sent_by_event: Counter[str] = field(default_factory=Counter)
    received_by_event: Counter[str] = field(default_factory=Counter)
    handler_seconds: dict[str, DurationHistogram] = field(default_factory=dict)

    def count_sent(self, event: str) -> None:
        self.sent += 1
        self.sent_by_event[_label(self.sent_by_event, event)] += 1

    def count_received(self, event: str) -> None:
        self.received += 1
        self.received_by_event[_label(self.received_by_event, event)] += 1

    def observe_handler(self, event: str, seconds: float) -> None:
        label = _label(self.handler_seconds, event)
        self.handler_seconds.setdefault(label, DurationHistogram()).observe(seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "handled": self.handled,
            "handler_errors": self.handler_errors,
            "transport_errors": self.transport_errors,
            "dropped": self.dropped,
            "rejected": dict(self.rejected),
            "policy_denied": dict(self.policy_denied),
        }
