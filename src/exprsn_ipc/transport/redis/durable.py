"""Durable delivery on Redis Streams: at-least-once, one replica per message, dead letters.

``IPCWorker.emit(..., durable=True)`` appends the signed envelope to the target
service's stream ``ipc:stream:<service>`` (field ``envelope``). Every Redis-transport
worker of that service reads the stream through the consumer group ``<service>``,
so each entry goes to exactly one replica. The worker answers every entry once
through its ``ack(outcome)``:

* ``done`` / ``duplicate``: XACK (the entry is settled);
* ``rejected`` (an invalid envelope or token: retrying cannot help): the entry is
  copied to the dead-letter stream ``ipc:dlq:<service>``, then XACKed;
* ``failed`` (a handler raised): nothing; the entry stays pending and is claimed
  again once it has been idle for ``idle_timeout_s``.

A reclaimer task runs XAUTOCLAIM every ``reclaim_interval_s``; that also picks up
the entries of consumers that died mid-handler. An entry delivered more than
``max_deliveries`` times is dead-lettered instead of being delivered again. While
a handler runs, the reclaimer keeps its entry's idle time at zero (XCLAIM JUSTID,
only while this consumer still owns it), so a slow handler is not mistaken for a
dead consumer. ``docs/durable.md`` has the whole design.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from exprsn_ipc.errors import TransportError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.transport.base import Ack, TransportPeer
from exprsn_ipc.transport.redis.keys import PRUNE_SCRIPT, REFRESH_SCRIPT, dlq_key, done_key, stream_key
from exprsn_ipc.transport.redis.streams import (
    ENVELOPE_FIELD,
    as_text,
    consumer_name,
    dead_letter_fields,
    ensure_group,
    rejection_reason,
    stream_entries,
    token_id_of,
)

__all__ = ["DurableConsumer", "DurableOptions", "DurableStats"]

log = get_logger("exprsn_ipc.transport.redis.durable")

BACKOFF_INITIAL_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
#: Pages of XAUTOCLAIM in one reclaim round (each of ``DurableOptions.batch`` entries).
MAX_CLAIM_PAGES: Final = 10
#: Consumers (of dead processes) with nothing pending are removed after this long idle ...
STALE_CONSUMER_S: Final = 3600.0
#: ... checked this often.
PRUNE_EVERY_S: Final = 60.0
#: How long a handled message's marker is kept (its duplicates are recognised meanwhile).
DONE_TTL_S: Final = 86_400
#: Settlements (XACK / dead-lettering) kept for retry while Redis is unreachable.
MAX_RETRY_SETTLEMENTS: Final = 100_000

_ERRORS: Final = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class DurableOptions:
    """Tuning of durable delivery (the defaults suit production; tests shorten the times).

    Attributes:
        enabled: consume the service's stream at all.
        maxlen: approximate cap of each stream (``XADD MAXLEN ~``). Pending entries
            beyond it are trimmed and lost, so keep it above the worst backlog.
        reclaim_interval_s: how often pending entries are checked.
        idle_timeout_s: an entry pending (not being handled) this long is claimed
            again, by whichever replica's reclaimer gets there first.
        max_deliveries: deliveries before an entry is dead-lettered.
        block_ms: XREADGROUP BLOCK time (also bounds how long an idle read waits).
        batch: entries read or claimed per command.
    """

    enabled: bool = True
    maxlen: int = 100_000
    reclaim_interval_s: float = 5.0
    idle_timeout_s: float = 30.0
    max_deliveries: int = 5
    block_ms: int = 2_000
    batch: int = 32

    def __post_init__(self) -> None:
        if self.maxlen <= 0 or self.max_deliveries <= 0 or self.block_ms <= 0 or self.batch <= 0:
            raise ValueError("maxlen, max_deliveries, block_ms and batch must be positive")
        if self.reclaim_interval_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("reclaim_interval_s and idle_timeout_s must be positive")
        if self.reclaim_interval_s >= self.idle_timeout_s:
            # Otherwise running handlers are not refreshed in time and get claimed twice.
            raise ValueError("reclaim_interval_s must be shorter than idle_timeout_s")


@dataclass
class DurableStats:
    """Counters of one consumer."""

    delivered: int = 0
    redelivered: int = 0
    acked: int = 0
    failed: int = 0
    dead_lettered: int = 0
    settle_retries: int = 0
    trimmed: int = 0
    #: Entries of messages a replica had already handled (the shared marker), settled unrun.
    duplicates: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "redelivered": self.redelivered,
            "acked": self.acked,
            "failed": self.failed,
            "deadLettered": self.dead_lettered,
            "settleRetries": self.settle_retries,
            "trimmed": self.trimmed,
            "duplicates": self.duplicates,
        }


@dataclass(slots=True)
class _Settlement:
    """One XACK, or one dead-lettering (XADD to the DLQ + XACK), to (re)try."""

    entry_id: str
    dead_letter: dict[bytes, bytes] | None = None
    #: The handled message's token id: its marker is written with the XACK.
    done: str | None = None


@dataclass
class _Backoff:
    delay: float = BACKOFF_INITIAL_S
    failures: int = 0

    async def wait(self) -> None:
        self.failures += 1
        await asyncio.sleep(self.delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not crypto)
        self.delay = min(self.delay * 2, BACKOFF_MAX_S)

    def reset(self) -> None:
        self.delay = BACKOFF_INITIAL_S
        self.failures = 0


class DurableConsumer:
    """Reads one service's stream for one worker, through the service's consumer group.

    Args:
        client: the transport's command client (XACK, XAUTOCLAIM, dead letters).
        reader: a client of its own for XREADGROUP BLOCK; closed by :meth:`close`.
        peer: the worker; entries go to ``peer.deliver(channel, raw, ack)``.
        options: see :class:`DurableOptions`.
    """

    def __init__(self, client: Redis, reader: Redis, peer: TransportPeer, options: DurableOptions) -> None:
        self.client = client
        self.reader = reader
        self.peer = peer
        self.options = options
        self.service = peer.service_name
        self.group = peer.service_name
        self.stream = stream_key(self.service)
        self.dlq = dlq_key(self.service)
        #: The channel name handlers see in ``meta.channel``.
        self.channel = self.stream
        self.consumer = consumer_name()
        self.stats = DurableStats()
        self._refresh = client.register_script(REFRESH_SCRIPT)
        self._prune = client.register_script(PRUNE_SCRIPT)
        # Entries handed to the worker and not settled yet, refreshed while they run.
        self._in_flight: dict[str, None] = {}
        self._retry: collections.deque[_Settlement] = collections.deque(maxlen=MAX_RETRY_SETTLEMENTS)
        self._receiving = False
        #: No claiming before this (``time.monotonic``): set by an outage.
        self._claim_after = 0.0
        self._reader_task: asyncio.Task[None] | None = None
        self._reclaimer_task: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> list[str]:
        """Entry ids being handled by this worker now."""
        return list(self._in_flight)

    async def start(self) -> None:
        """Create the group if needed, then start the reader and the reclaimer.

        Raises:
            TransportError: Redis refused or is unreachable.
        """
        try:
            await ensure_group(self.client, self.service)
        except _ERRORS as exc:
            raise TransportError(f"cannot create the consumer group of {self.stream}: {exc}") from exc
        self._receiving = True
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"durable-reader:{self.service}")
        self._reclaimer_task = asyncio.create_task(self._reclaim_loop(), name=f"durable-reclaimer:{self.service}")

    async def stop(self) -> None:
        """Stop taking new entries. Running handlers can still settle theirs (until :meth:`close`);
        anything unsettled stays pending and another replica claims it."""
        self._receiving = False
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stop everything, try the queued settlements once more, close the reader connection."""
        await self.stop()
        task, self._reclaimer_task = self._reclaimer_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._retry:
            with contextlib.suppress(*_ERRORS):
                await self._flush_retries()
        if self._retry:
            log.warning(
                "%s: %d durable settlements could not be written; those entries will be redelivered",
                self.service,
                len(self._retry),
            )
        with contextlib.suppress(*_ERRORS):
            await self.reader.aclose()

    # Reading --------------------------------------------------------------------
    async def _read_loop(self) -> None:
        backoff = _Backoff()
        while self._receiving:
            try:
                reply = await self.reader.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=self.options.batch,
                    block=self.options.block_ms,
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data (restart without persistence), or deleted
                    with contextlib.suppress(*_ERRORS):
                        if await ensure_group(self.client, self.service):
                            log.warning("%s: recreated the consumer group of %s", self.service, self.stream)
                        continue
                log.warning("%s: XREADGROUP on %s failed: %s", self.service, self.stream, exc)
                await backoff.wait()
                continue
            except _ERRORS as exc:
                if backoff.failures == 0:
                    log.info("%s: durable reader lost Redis (%s); retrying", self.service, exc)
                await backoff.wait()
                continue
            backoff.reset()
            if self._retry:  # back from an outage: settle what was handled meanwhile first
                with contextlib.suppress(*_ERRORS):
                    await self._flush_retries()
            for _stream, entries in stream_entries(reply):
                read = [(as_text(entry_id), fields) for entry_id, fields in entries if entry_id is not None]
                self.stats.delivered += len(read)
                for entry_id, fields in await self._not_done(read):
                    await self._deliver(entry_id, fields, deliveries=1)

    async def _deliver(self, entry_id: str, fields: dict[bytes, bytes] | None, *, deliveries: int) -> None:
        raw = fields.get(ENVELOPE_FIELD) if fields else None
        if not isinstance(raw, bytes):
            await self._settle(
                _Settlement(
                    entry_id,
                    dead_letter_fields(b"", "entry has no envelope field", deliveries, entry_id, self.consumer),
                )
            )
            return
        self._in_flight[entry_id] = None
        await self.peer.deliver(self.channel, raw, self._ack_for(entry_id, raw, deliveries))

    async def _not_done(
        self, entries: list[tuple[str, dict[bytes, bytes] | None]]
    ) -> list[tuple[str, dict[bytes, bytes] | None]]:
        """``entries`` without the messages a replica of this service has handled already
        (their markers, one MGET per batch); those are settled as duplicates, unrun."""
        ids = [token_id_of(fields.get(ENVELOPE_FIELD) if fields else None) for _, fields in entries]
        known = [token_id for token_id in ids if token_id is not None]
        if not known:
            return entries
        try:
            found = await self.client.mget([done_key(self.service, token_id) for token_id in known])
        except _ERRORS:
            return entries  # cannot tell: deliver (at-least-once), the worker's own window still applies
        done = {token_id for token_id, marker in zip(known, found, strict=True) if marker is not None}
        fresh = []
        for (entry_id, fields), token_id in zip(entries, ids, strict=True):
            if token_id in done:
                self.stats.duplicates += 1
                await self._settle(_Settlement(entry_id))
            else:
                fresh.append((entry_id, fields))
        return fresh

    def _ack_for(self, entry_id: str, raw: bytes, deliveries: int) -> Ack:
        settled = False

        async def ack(outcome: str) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            self._in_flight.pop(entry_id, None)
            task = asyncio.current_task()
            if outcome == "done" and task is not None and task.cancelling():
                # Settled from a handler task being cancelled (shutdown after the drain
                # timeout): the handler did not finish, so the entry must stay pending.
                outcome = "failed"
            if outcome == "failed":
                self.stats.failed += 1  # stays pending; claimed again after idle_timeout_s
                return
            if outcome == "rejected":
                reason = rejection_reason(raw)
                dead = dead_letter_fields(raw, reason, deliveries, entry_id, self.consumer)
                await self._settle(_Settlement(entry_id, dead))
                return
            await self._settle(_Settlement(entry_id, done=token_id_of(raw) if outcome == "done" else None))

        return ack

    # Settling -------------------------------------------------------------------
    async def _settle(self, settlement: _Settlement) -> None:
        """XACK (or dead-letter + XACK); queued for retry when Redis is unreachable."""
        try:
            await self._write(settlement)
        except ResponseError as exc:  # refused, not unreachable: retrying would not help
            log.warning("%s: could not settle durable entry %s: %s", self.service, settlement.entry_id, exc)
        except _ERRORS as exc:
            self.stats.settle_retries += 1
            self._retry.append(settlement)
            log.debug("%s: settling %s failed (%s); retried when Redis is back", self.service, settlement.entry_id, exc)

    async def _write(self, settlement: _Settlement) -> None:
        if settlement.dead_letter is None:
            if settlement.done is None:
                await self.client.xack(self.stream, self.group, settlement.entry_id)
            else:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.xack(self.stream, self.group, settlement.entry_id)
                    pipe.set(done_key(self.service, settlement.done), b"1", ex=DONE_TTL_S)
                    await pipe.execute()
            self.stats.acked += 1
            return
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dlq, settlement.dead_letter, maxlen=self.options.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.xack(self.stream, self.group, settlement.entry_id)
            await pipe.execute()
        self.stats.dead_lettered += 1
        log.warning(
            "%s: dead-lettered durable entry %s to %s: %s",
            self.service,
            settlement.entry_id,
            self.dlq,
            as_text(settlement.dead_letter.get(b"reason", b"")),
        )

    async def _flush_retries(self) -> None:
        while self._retry:
            try:
                await self._write(self._retry[0])
            except ResponseError as exc:
                log.warning("%s: dropped a durable settlement Redis refused: %s", self.service, exc)
            self._retry.popleft()

    # Reclaiming -----------------------------------------------------------------
    async def _reclaim_loop(self) -> None:
        backoff = _Backoff()
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + PRUNE_EVERY_S
        while True:
            await asyncio.sleep(self.options.reclaim_interval_s)
            try:
                await self.reclaim_once()
                if self._receiving and loop.time() >= next_prune:
                    next_prune = loop.time() + PRUNE_EVERY_S
                    await self.prune_consumers(STALE_CONSUMER_S)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    continue  # the reader recreates the group
                log.warning("%s: reclaiming on %s failed: %s", self.service, self.stream, exc)
            except _ERRORS as exc:
                log.debug("%s: reclaiming on %s failed: %s", self.service, self.stream, exc)
                # After an outage every pending entry looks idle. Claim nothing for a while,
                # so that the replicas that handled them settle them first (their queued XACKs).
                self._claim_after = time.monotonic() + 2 * BACKOFF_MAX_S + 2 * self.options.reclaim_interval_s
                await backoff.wait()
                continue
            backoff.reset()

    async def reclaim_once(self) -> int:
        """One round: retry settlements, refresh running entries, claim idle ones; returns how many were claimed."""
        await self._flush_retries()
        await self._refresh_in_flight()
        if not self._receiving or time.monotonic() < self._claim_after:
            return 0
        claimed_total = 0
        start: bytes | str = "0-0"
        for _ in range(MAX_CLAIM_PAGES):
            reply = await self.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=int(self.options.idle_timeout_s * 1000),
                start_id=start,
                count=self.options.batch,
            )
            next_id, claimed = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                # Trimmed by MAXLEN while pending (Redis drops them from the PEL itself).
                self.stats.trimmed += len(deleted)
                log.error(
                    "%s: %d pending durable entries were trimmed from %s", self.service, len(deleted), self.stream
                )
            entries = [(as_text(i), f) for i, f in claimed if i is not None]
            claimed_total += len(entries)
            if entries:
                await self._redeliver(entries)
            if as_text(next_id) == "0-0" or not self._receiving:
                break
            start = next_id
        return claimed_total

    async def prune_consumers(self, idle_s: float) -> list[str]:
        """Remove the group's other consumers idle for ``idle_s`` with nothing pending (dead
        processes leave them behind); returns their names. Never loses an entry."""
        removed: list[str] = []
        for info in await self.client.xinfo_consumers(self.stream, self.group):
            name = as_text(info.get("name", b""))
            if name == self.consumer or int(info.get("pending", 0)) > 0:
                continue
            if int(info.get("idle", 0)) < idle_s * 1000:
                continue
            if int(await self._prune(keys=[self.stream], args=[self.group, name])) >= 0:
                removed.append(name)
        if removed:
            log.info("%s: removed %d idle consumers from %s", self.service, len(removed), self.stream)
        return removed

    async def _refresh_in_flight(self) -> None:
        ids = list(self._in_flight)
        for begin in range(0, len(ids), 500):
            chunk = ids[begin : begin + 500]
            reply = await self._refresh(keys=[self.stream], args=[self.group, self.consumer, *chunk])
            owned = {as_text(i) for i in reply}
            for entry_id in chunk:
                if entry_id not in owned:
                    # Settled meanwhile, or claimed by another consumer: stop refreshing it.
                    self._in_flight.pop(entry_id, None)

    async def _redeliver(self, entries: list[tuple[str, dict[bytes, bytes] | None]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        again: list[tuple[str, dict[bytes, bytes] | None, int]] = []
        for (entry_id, fields), info in zip(entries, pending, strict=True):
            if entry_id in self._in_flight:
                continue  # still being handled here (not refreshed in time): leave it be
            if not info:
                continue  # acknowledged meanwhile (e.g. by its slow first consumer)
            deliveries = int(info[0]["times_delivered"])
            if deliveries > self.options.max_deliveries:
                raw = fields.get(ENVELOPE_FIELD, b"") if fields else b""
                cap = self.options.max_deliveries
                reason = f"delivered {deliveries - 1} times without success (max_deliveries={cap})"
                await self._settle(
                    _Settlement(entry_id, dead_letter_fields(raw, reason, deliveries - 1, entry_id, self.consumer))
                )
                continue
            again.append((entry_id, fields, deliveries))
        fresh = await self._not_done([(entry_id, fields) for entry_id, fields, _ in again])
        times = {entry_id: deliveries for entry_id, _, deliveries in again}
        for entry_id, fields in fresh:
            self.stats.redelivered += 1
            await self._deliver(entry_id, fields, deliveries=times[entry_id])
