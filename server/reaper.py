"""The reaper: nothing stays pending forever.

Every worker runs one. It closes the running messages of workers whose heartbeat expired (they
died, hung, or lost the database for longer than ``LEASE_SECONDS``) as ``error``/``interrupted``,
with the content of their stored deltas, which appends their terminal event for every listener.
It sleeps until the next heartbeat it knows of is due to expire (looking again at least every
``min(LEASE_SECONDS / 3, 5 s)``), so a killed worker's answers end within ``LEASE_SECONDS`` of its
last renewal, plus about ``REAP_SLACK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from uuid import UUID

from server import metrics
from server.errors import DatabaseUnavailable
from server.heartbeat import renewal_interval
from server.store import Store

logger = logging.getLogger(__name__)
REAP_BATCH = 100
# How long after a heartbeat expires the reaper looks (and the shortest pause between rounds).
REAP_SLACK_SECONDS = 0.1


class Reaper:
    def __init__(
        self,
        store: Store,
        *,
        worker: Callable[[], UUID],
        lease_seconds: float,
        on_reaped: Callable[[UUID], None],
    ) -> None:
        self.store = store
        self.worker = worker
        self.poll = renewal_interval(lease_seconds)
        self.on_reaped = on_reaped

    async def run(self) -> None:
        while True:
            await asyncio.sleep(await self.pause())
            try:
                await self.reap_once()
            except DatabaseUnavailable:
                logger.warning("reaping skipped: database unavailable")
            except Exception:
                logger.exception("reaping failed; trying again next round")

    async def pause(self) -> float:
        """Until the next heartbeat we know of expires; at most ``poll``."""
        try:
            seconds = await self.store.next_expiry(self.worker())
        except Exception:
            return self.poll
        if seconds is None:
            return self.poll
        return min(self.poll, max(REAP_SLACK_SECONDS, seconds + REAP_SLACK_SECONDS))

    async def reap_once(self) -> int:
        total = 0
        while True:
            reaped = await self.store.reap(REAP_BATCH)
            for stored in reaped:
                self.on_reaped(stored.message.id)  # ours, if our own heartbeat expired
            total += len(reaped)
            metrics.LEASES_REAPED.inc(len(reaped))
            metrics.GENERATIONS_FINISHED.labels("error").inc(len(reaped))
            if len(reaped) < REAP_BATCH:
                break
        if total:
            logger.warning("reaped %d message(s) whose worker stopped", total)
        await self.store.forget_workers()
        return total
