"""The batched writer: the news of this worker's running generations, a few statements a second.

Every ``interval`` the flusher writes the logs that are *due*: finished, or with enough news to
fill a chunk (``min_events``), or whose oldest news has waited ``max_delay``. Waiting a little
lets several events share a row, which is what the database pays for; the wait is bounded, so
listeners see each event at most ``max_delay`` plus one flush after it was made.

After each flush the written events become visible to listeners. While the database is away the
logs keep their unwritten events (bounded: producers wait, see ``Runner``) and the flush is retried
with backoff; nothing a listener has seen is ever lost, because it only sees written events. A
statement is bounded in rows and characters; a batch that fails for a reason other than the
database being away is split until the message that fails is found, and that one alone is ended.

Exactly one writer per log, always: the loop and ``drain`` take turns (``_writing``), each taking
its snapshots of the logs only once the other's write has answered. Regression: drain flushed
beside the loop, snapshotting a log whose write was in flight; the terminal frame was appended
twice (the answer counted twice), and ``mark_written`` of two overlapping snapshots could drop
chunks sealed between them, a gap in the stored log at which readers on other workers stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from uuid import UUID

from server import metrics
from server.errors import ServiceUnavailable, WriteConflict
from server.eventlog import MessageLog
from server.store import FlushItem, Store

logger = logging.getLogger(__name__)

# A message alone whose write fails this many times in a row (for a reason other than an
# outage) is ended as unwritable.
UNWRITABLE_AFTER = 3
# Bounds of one flush statement; a log is never split between statements.
MAX_STATEMENT_CHUNKS = 2_000
MAX_STATEMENT_CHARS = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    interval: float  # at most one flush per interval (seconds)
    max_delay: float  # the longest an event waits to be written (seconds)
    min_events: int  # a log with this many unwritten events is written at the next flush


class Flusher:
    def __init__(
        self,
        store: Store,
        worker: Callable[[], UUID],
        policy: FlushPolicy,
        *,
        on_lost: Callable[[UUID], None],
    ) -> None:
        self.store = store
        self.worker = worker  # this worker's current identity (its heartbeat's)
        self.policy = policy
        self.on_lost = on_lost
        self.logs: dict[UUID, MessageLog] = {}  # this worker's logs that are not closed yet
        self._dirty: set[UUID] = set()
        self._wakeup = asyncio.Event()
        # Held from the first snapshot of a flush to its last reply (uncontended but while
        # draining: an acquire that does not wait costs no switch of tasks).
        self._writing = asyncio.Lock()

    def register(self, log: MessageLog) -> None:
        self.logs[log.placeholder.id] = log

    def mark_dirty(self, log: MessageLog) -> None:
        self._dirty.add(log.placeholder.id)
        self._wakeup.set()

    async def run(self) -> None:
        """Flush whenever something is due, at most once per interval; forever."""
        loop = asyncio.get_running_loop()
        interval = self.policy.interval
        backoff = interval
        while True:
            await self._wakeup.wait()
            started = loop.time()
            try:
                await self.flush_once()
                backoff = interval
            except Exception as exc:
                # Never let the writer die: whatever went wrong, the logs keep their events
                # and the next attempt writes them.
                if isinstance(exc, ServiceUnavailable):
                    logger.warning("flush failed: database unavailable; retry in %.2fs", backoff)
                else:
                    logger.exception("flush failed; retry in %.2fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def flush_once(self, *, everything: bool = False) -> None:
        """Write the due logs (``everything``: every log with news), in bounded statements;
        after any write of another caller (the loop, or drain) has answered."""
        async with self._writing:
            self._wakeup.clear()
            due = self._take_due(everything)
            for batch in bounded(due):
                await self._write(batch)

    def _take_due(self, everything: bool) -> list[MessageLog]:
        now = time.monotonic()
        due: list[MessageLog] = []
        for message_id in list(self._dirty):
            log = self.logs.get(message_id)
            if log is None or not log.needs_flush:
                self._dirty.discard(message_id)
            elif everything or log.due(
                now, max_delay=self.policy.max_delay, min_events=self.policy.min_events
            ):
                due.append(log)
        if len(due) < len(self._dirty):
            self._wakeup.set()  # the others are due later: look again next interval
        return due

    async def _write(self, logs: list[MessageLog]) -> None:
        """One statement for ``logs``; on a failure that is not the database being away, split
        the batch until the log that fails is found, and end that one."""
        items = [log.snapshot() for log in logs]
        started = time.perf_counter()
        try:
            written = await self.store.flush(self.worker(), items)
        except WriteConflict:
            # An end (cancel, the reaper) took the id of one of these chunks after this
            # statement's snapshot: nothing was written. Sent again at the next interval, the
            # flush finds that message ended and leaves it out (on_lost); the others are written.
            logger.info("a flush met an answer ended meanwhile; writing the batch again")
            self._wakeup.set()
            return
        except ServiceUnavailable:
            # The database is away, or this worker's heartbeat is being registered again (after
            # it expired): wait and try again, as for an outage. Never a reason to end an answer.
            metrics.FLUSH_FAILURES.inc()
            self._wakeup.set()
            raise
        except Exception:
            metrics.FLUSH_FAILURES.inc()
            if len(logs) == 1:
                log = logs[0]
                log.write_failures += 1
                if log.write_failures < UNWRITABLE_AFTER:
                    # Once may be a passing fault the driver reported oddly: try it again later.
                    logger.warning(
                        "message %s could not be written; trying again", log.placeholder.id
                    )
                    self._wakeup.set()
                    return
                await self._end_unwritable(log)
                return
            logger.warning("a flush of %d messages failed; writing them in halves", len(logs))
            half = len(logs) // 2
            await self._write(logs[:half])
            await self._write(logs[half:])
            return
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.FLUSH_BATCH.observe(len(items))
        metrics.EVENTS_FLUSHED.inc(sum(item.events for item in items))
        for log, item in zip(logs, items, strict=True):
            if item.message_id not in written:
                logger.warning("message %s is no longer ours; dropping its log", item.message_id)
                self.on_lost(item.message_id)
                continue
            log.write_failures = 0
            log.mark_written(item, written[item.message_id])
            if log.closed:
                self.forget(log)
                metrics.GENERATIONS_FINISHED.labels(item.status).inc()
                metrics.GENERATION_SECONDS.observe(time.monotonic() - log.started)
                if item.usage is not None:
                    metrics.TOKENS.labels("prompt").inc(item.usage.prompt_tokens)
                    metrics.TOKENS.labels("completion").inc(item.usage.completion_tokens)
            elif not log.needs_flush:
                self._dirty.discard(item.message_id)

    async def _end_unwritable(self, log: MessageLog) -> None:
        """A message whose write fails whatever we do (not the database being away): end it as
        ``error``/``storage_error`` with the content of its written deltas, so that it does not
        hold the others' writes hostage, and let its listeners read that end."""
        message = log.placeholder
        logger.exception("message %s cannot be written; ending it", message.id)
        await self.store.end_unwritable(message.created_by, message.project_id, message.id)
        metrics.GENERATIONS_FINISHED.labels("error").inc()
        self.on_lost(message.id)

    def forget(self, log: MessageLog) -> None:
        self.logs.pop(log.placeholder.id, None)
        self._dirty.discard(log.placeholder.id)

    async def drain(self, seconds: float) -> bool:
        """Write everything (or give up after ``seconds``); True if all was written. Safe beside
        the running loop: a write of the loop in flight is waited for, never repeated."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.pending and loop.time() < deadline:
            try:
                await self.flush_once(everything=True)
            except Exception:
                await asyncio.sleep(0.1)
        return not self.pending

    @property
    def pending(self) -> int:
        """Logs with something not yet written."""
        return sum(1 for log in self.logs.values() if log.needs_flush)


def bounded(logs: list[MessageLog]) -> Iterator[list[MessageLog]]:
    """``logs`` in batches of at most MAX_STATEMENT_CHUNKS chunks and MAX_STATEMENT_CHARS
    characters (a log that alone exceeds them goes alone)."""
    batch: list[MessageLog] = []
    chunks = chars = 0
    for log in logs:
        log_chunks, log_chars = log.pending_size()
        if batch and (
            chunks + log_chunks > MAX_STATEMENT_CHUNKS or chars + log_chars > MAX_STATEMENT_CHARS
        ):
            yield batch
            batch, chunks, chars = [], 0, 0
        batch.append(log)
        chunks += log_chunks
        chars += log_chars
    if batch:
        yield batch


__all__ = ["FlushItem", "FlushPolicy", "Flusher"]
