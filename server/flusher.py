"""The batched writer: one multi-row write per flush interval for all running generations.

After each flush the written events become visible to listeners. While the database is away the
logs keep their unwritten events (bounded: producers wait, see ``Runner``) and the flush is retried
with backoff; nothing a listener has seen is ever lost, because it only sees written events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from uuid import UUID

from server import metrics
from server.errors import DatabaseUnavailable
from server.eventlog import MessageLog
from server.store import Store

logger = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self,
        store: Store,
        owner_id: UUID,
        *,
        interval: float,
        on_lost: Callable[[UUID], None],
    ) -> None:
        self.store = store
        self.owner_id = owner_id
        self.interval = interval
        self.on_lost = on_lost
        self.logs: dict[UUID, MessageLog] = {}  # this worker's logs that are not closed yet
        self._dirty: set[UUID] = set()
        self._wakeup = asyncio.Event()

    def register(self, log: MessageLog) -> None:
        self.logs[log.placeholder.id] = log

    def mark_dirty(self, log: MessageLog) -> None:
        self._dirty.add(log.placeholder.id)
        self._wakeup.set()

    async def run(self) -> None:
        """Flush whenever something is dirty, at most once per interval; forever."""
        loop = asyncio.get_running_loop()
        backoff = self.interval
        while True:
            await self._wakeup.wait()
            started = loop.time()
            try:
                await self.flush_once()
                backoff = self.interval
            except Exception as exc:
                # Never let the writer die: whatever went wrong, the logs keep their events
                # and the next attempt writes them.
                if isinstance(exc, DatabaseUnavailable):
                    logger.warning("flush failed: database unavailable; retry in %.2fs", backoff)
                else:
                    logger.exception("flush failed; retry in %.2fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))

    async def flush_once(self) -> None:
        """Write every dirty log's news in one statement, then publish what was written."""
        self._wakeup.clear()
        ids, self._dirty = self._dirty, set()
        logs = [log for i in ids if (log := self.logs.get(i)) is not None and log.needs_flush]
        if not logs:
            return
        items = [log.snapshot() for log in logs]
        started = time.perf_counter()
        try:
            written = await self.store.flush(self.owner_id, items)
        except BaseException:
            self._dirty |= ids  # keep them for the retry
            self._wakeup.set()
            metrics.FLUSH_FAILURES.inc()
            raise
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.FLUSH_BATCH.observe(len(items))
        metrics.EVENTS_FLUSHED.inc(sum(len(item.events) for item in items))
        for log, item in zip(logs, items, strict=True):
            updated_at = written.get(item.message_id)
            if updated_at is None:
                logger.warning("message %s is no longer ours; dropping its log", item.message_id)
                self.on_lost(item.message_id)
                continue
            log.mark_written(item, updated_at)
            if log.closed:
                self.forget(log)
                metrics.GENERATIONS_FINISHED.labels(item.status).inc()
                metrics.GENERATION_SECONDS.observe(time.monotonic() - log.started)
            elif log.needs_flush:
                self.mark_dirty(log)

    def forget(self, log: MessageLog) -> None:
        self.logs.pop(log.placeholder.id, None)

    async def drain(self, seconds: float) -> bool:
        """Wait until every log's news is written (or ``seconds`` pass); True if all was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.pending and loop.time() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.02)
        return not self.pending

    @property
    def pending(self) -> int:
        """Logs with something not yet written."""
        return sum(1 for log in self.logs.values() if log.needs_flush)
