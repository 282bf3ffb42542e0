"""The dashboard's live feed: what the Bridge routes, summarised for the browser.

The Bridge calls :meth:`DashboardFeed.on_routed` for every message it publishes
(``Bridge.route_listeners``). The feed keeps the most recent events (with a
truncated, redacted payload preview), per-event rates over a short window, and
sends both, plus a stats summary, to the Socket.IO namespace ``/dashboard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson
import socketio

from exprsn_ipc.bridge.credentials import token_from_environ
from exprsn_ipc.errors import TokenError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.net import is_loopback
from exprsn_ipc.protocol.events import BusEvent

if TYPE_CHECKING:
    from exprsn_ipc.bridge.core import Bridge

__all__ = ["NAMESPACE", "DashboardFeed", "RateTracker", "describe_message", "preview", "rendered"]

log = get_logger("exprsn_ipc.bridge.dashboard")

#: The Socket.IO namespace of the feed.
NAMESPACE: Final = "/dashboard"
#: Characters of payload shown per event.
PREVIEW_CHARS: Final = 160
REDACTED: Final = "«redacted»"
#: Keys whose values are never shown (case-insensitive substrings).
_SECRET_KEYS: Final = (
    "token",
    "password",
    "passwd",
    "secret",
    "session",
    "authorization",
    "cookie",
    "credential",
    "apikey",
    "api_key",
    "privatekey",
    "private_key",
)
#: A JWT anywhere in a string value (broker tokens are JWTs).
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_MAX_DEPTH: Final = 6
_MAX_EVENT_NAMES: Final = 500


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if any(s in str(k).lower() for s in _SECRET_KEYS) else _redact(v, depth + 1)
            for k, v in list(value.items())[:50]
        }
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value[:50]]
    if isinstance(value, str):
        return _JWT.sub(REDACTED, value)
    return value


def preview(data: Any, limit: int = PREVIEW_CHARS) -> str:
    """A one-line JSON preview of ``data``: secrets redacted, at most ``limit`` characters."""
    if data is None:
        return ""
    try:
        text = orjson.dumps(_redact(data), default=str).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        text = REDACTED
    if len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def describe_message(
    service: str, target: str, raw: bytes, receivers: int, *, with_preview: bool = True
) -> dict[str, Any] | None:
    """One routed message as the dashboard shows it, or None when it cannot be read.

    Replies (``ipc:reply``) show the answered request's result, not the wrapper.
    The token is never included. With ``with_preview=False`` the payload is kept
    under ``data`` instead, for :func:`rendered` to turn into a preview later.
    """
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        return None
    data = message.get("data")
    metadata = message.get("metadata")
    if message["event"] == BusEvent.REPLY and isinstance(data, dict):
        data = data.get("data") if data.get("success") else {"error": data.get("error")}
    item: dict[str, Any] = {
        "time": int(time.time() * 1000),
        "source": str(message.get("source") or service),
        "target": str(message.get("target") or target),
        "event": message["event"],
        "receivers": receivers,
        "bytes": len(raw),
        "request": isinstance(metadata, dict) and bool(metadata.get("requestId")),
    }
    if with_preview:
        item["preview"] = preview(data)
    else:
        item["data"] = data
    return item


def rendered(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with its payload replaced by the preview (computed once, in place)."""
    if "data" in item:
        item["preview"] = preview(item.pop("data"))
    return item


class RateTracker:
    """Events per second, per event name, over the last ``window_s`` seconds (1 s buckets)."""

    def __init__(self, window_s: int = 10) -> None:
        self.window_s = window_s
        self.buckets: deque[tuple[int, Counter[str]]] = deque()
        self.totals: Counter[str] = Counter()

    def _name(self, event: str) -> str:
        if event in self.totals or len(self.totals) < _MAX_EVENT_NAMES:
            return event
        return "other"

    def add(self, event: str, now: float | None = None) -> None:
        second = int(time.time() if now is None else now)
        name = self._name(event)
        self.totals[name] += 1
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append((second, Counter()))
            self._prune(second)
        self.buckets[-1][1][name] += 1

    def _prune(self, second: int) -> None:
        while self.buckets and self.buckets[0][0] <= second - self.window_s:
            self.buckets.popleft()

    def rates(self, now: float | None = None) -> list[dict[str, Any]]:
        """``[{event, rate, total}]``, busiest first (rate in events per second)."""
        second = int(time.time() if now is None else now)
        self._prune(second)
        recent: Counter[str] = Counter()
        for _, counts in self.buckets:
            recent.update(counts)
        rows: list[dict[str, Any]] = [
            {"event": event, "rate": round(recent.get(event, 0) / self.window_s, 2), "total": total}
            for event, total in self.totals.items()
        ]
        rows.sort(key=lambda row: (-row["rate"], -row["total"], row["event"]))
        return rows


def _environ_peer(environ: Mapping[str, Any]) -> str | None:
    scope = environ.get("asgi.scope")
    if isinstance(scope, dict) and scope.get("client"):
        return str(scope["client"][0])
    addr = environ.get("REMOTE_ADDR")
    return str(addr) if addr else None


class DashboardFeed:
    """Recent events, rates and stats of one Bridge, pushed to ``/dashboard`` clients.

    Access: with ``NODE_ENV=development`` a loopback client needs nothing;
    anyone else needs a broker token signed with the fleet's ``IPC_BROKER_KEY``.
    """

    def __init__(
        self,
        bridge: Bridge,
        *,
        recent: int = 200,
        rate_window_s: int = 10,
        flush_s: float = 0.25,
        stats_every_s: float = 1.0,
        max_batch: int = 100,
    ) -> None:
        self.bridge = bridge
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.rates = RateTracker(rate_window_s)
        self.flush_s = flush_s
        self.stats_every_s = stats_every_s
        self.max_batch = max_batch
        self.clients: set[str] = set()
        self.skipped = 0
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # Access -----------------------------------------------------------------------
    def check_access(self, peer: str | None, token: str | None) -> str | None:
        """None when allowed, else why not."""
        if self.bridge.operators.required:  # production, reachable from other machines: operators only
            return None if self.bridge.operators.is_operator(token) else "the dashboard needs an operator credential"
        if token and token != "true":
            try:
                self.bridge.verifier.verify_login(token)
            except TokenError as exc:
                return f"invalid broker token: {exc}"
            return None
        if self.bridge.settings.node_env == "development" and is_loopback(peer):
            return None
        return "the dashboard needs a broker token (?token=…) unless NODE_ENV=development and you are on loopback"

    # Input --------------------------------------------------------------------------
    def on_routed(self, service: str, target: str, raw: bytes, receivers: int) -> None:
        # Only the event name is needed per message; the preview is made when someone looks.
        item = describe_message(service, target, raw, receivers, with_preview=False)
        if item is None:
            return
        self.rates.add(item["event"])
        self.recent.append(item)
        if self.clients:
            if len(self._pending) < self.max_batch:
                self._pending.append(item)
            else:
                self.skipped += 1
            self._wake.set()

    # State --------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """Services, connections, rates, rate-limit state and errors, for the page."""
        bridge = self.bridge
        snapshot = await bridge.snapshot()
        counters = snapshot["counters"]
        per_service: dict[str, Any] = counters["perService"]
        connections: list[dict[str, Any]] = snapshot["connections"]
        registered = {str(entry.get("name")): entry for entry in snapshot["services"] if isinstance(entry, dict)}
        conn_count: Counter[str] = Counter(str(c.get("fullName")) for c in connections)
        names = sorted(set(registered) | set(conn_count) | set(per_service))
        services = []
        for name in names:
            counts = per_service.get(name, {})
            rejected = counts.get("rejected", {}) if isinstance(counts, dict) else {}
            services.append(
                {
                    "name": name,
                    "active": name in registered,
                    "via": registered.get(name, {}).get("via", "bus"),
                    "replicas": registered.get(name, {}).get("replicas", 0),
                    "connections": conn_count.get(name, 0),
                    "sent": counts.get("sent", 0) if isinstance(counts, dict) else 0,
                    "delivered": counts.get("delivered", 0) if isinstance(counts, dict) else 0,
                    "rejected": sum(rejected.values()),
                }
            )
        limits = snapshot["rateLimits"]
        denials = {
            name: counts.get("rejected", {}).get("RATE_LIMIT_EXCEEDED", 0)
            for name, counts in per_service.items()
            if isinstance(counts, dict) and counts.get("rejected", {}).get("RATE_LIMIT_EXCEEDED")
        }
        return {
            "time": int(time.time() * 1000),
            "backend": snapshot["backend"],
            "uptime": snapshot["uptime"],
            "services": services,
            "connections": connections,
            "rates": self.rates.rates()[:50],
            "rateLimits": {**limits, "denials": denials},
            "errors": {
                "rejected": counters["rejected"],
                "perService": {
                    name: counts.get("rejected", {})
                    for name, counts in per_service.items()
                    if isinstance(counts, dict) and counts.get("rejected")
                },
                "feedSkipped": self.skipped,
            },
            "totals": {"routed": counters["messagesRouted"], "delivered": counters["messagesDelivered"]},
        }

    async def state(self) -> dict[str, Any]:
        """What a client gets on connect: the stats and the recent events (oldest first)."""
        return {"stats": await self.stats(), "events": [rendered(item) for item in self.recent]}

    # Socket.IO ------------------------------------------------------------------------
    def attach(self) -> None:
        """Listen to the Bridge and serve the ``/dashboard`` namespace on its Socket.IO server."""
        bridge = self.bridge
        if self.on_routed not in bridge.route_listeners:
            bridge.route_listeners.append(self.on_routed)
        sio = bridge.sio
        if sio is None:
            raise RuntimeError("attach the Bridge's Socket.IO server (bridge.sio_server.attach) first")

        async def on_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            peer = _environ_peer(environ)
            reason = self.check_access(peer, token_from_environ(environ, auth))
            if reason is not None:
                log.warning("refused a dashboard connection from %s: %s", peer, reason)
                raise socketio.exceptions.ConnectionRefusedError(f"UNAUTHORIZED: {reason}")
            self.clients.add(sid)
            self._wake.set()

        async def on_disconnect(sid: str, reason: Any = None) -> None:
            self.clients.discard(sid)

        async def on_state(sid: str, *_: Any) -> dict[str, Any]:
            if sid not in self.clients:
                return {}
            return await self.state()

        async def on_other(event: str, sid: str, *_: Any) -> None:
            return None  # the feed only talks; anything else is ignored

        sio.on("connect", on_connect, namespace=NAMESPACE)
        sio.on("disconnect", on_disconnect, namespace=NAMESPACE)
        sio.on("state", on_state, namespace=NAMESPACE)
        sio.on("*", on_other, namespace=NAMESPACE)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dashboard-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        """Push batched events (every ``flush_s``) and stats (every ``stats_every_s``) while clients watch."""
        last_stats = 0.0
        while True:
            if not self.clients:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(self.flush_s)
            due = time.monotonic() - last_stats >= self.stats_every_s
            if due:
                last_stats = time.monotonic()
            try:
                await self._push(due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the dashboard feed failed to push an update")

    async def _push(self, with_stats: bool) -> None:
        sio = self.bridge.sio
        if sio is None:
            return
        batch, self._pending = [rendered(item) for item in self._pending], []
        if batch:
            await sio.emit("events", batch, namespace=NAMESPACE)
        if with_stats:
            await sio.emit("stats", await self.stats(), namespace=NAMESPACE)
