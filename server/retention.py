"""Retention: the stored events of answers finished longer than ``EVENT_RETENTION_HOURS`` ago are
deleted, a batch at a time, once a minute, in a loop of its own (never in the way of anything
else). The message rows keep the final content; a pruned log is answered with its terminal event.
"""

from __future__ import annotations

import asyncio
import logging

from server import metrics
from server.errors import DatabaseUnavailable
from server.store import Store

logger = logging.getLogger(__name__)
PRUNE_BATCH = 2_000  # chunks per statement
PRUNE_EVERY = 60.0


class Retention:
    def __init__(self, store: Store, *, retention_seconds: float) -> None:
        self.store = store
        self.retention_seconds = retention_seconds  # 0: keep events forever

    async def run(self) -> None:
        if self.retention_seconds <= 0:
            return
        while True:
            await asyncio.sleep(PRUNE_EVERY)
            try:
                await self.prune()
            except DatabaseUnavailable:
                logger.warning("pruning skipped: database unavailable")
            except Exception:
                logger.exception("pruning failed; trying again later")

    async def prune(self) -> int:
        """Delete every stored event past retention; the number of events deleted."""
        total = 0
        while True:
            chunks, events = await self.store.prune_events(self.retention_seconds, PRUNE_BATCH)
            total += events
            metrics.EVENTS_PRUNED.inc(events)
            if chunks < PRUNE_BATCH:
                return total
