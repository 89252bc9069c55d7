"""Leases: nothing stays pending forever.

The worker holds a lease on each message it is writing and renews all of them in one statement on
a timer. Every worker also reaps: it closes messages whose lease expired (their worker died or was
cut off) as ``error``/``interrupted``, which appends their terminal event for every listener.
"""

from __future__ import annotations

import asyncio
import logging
import time

from server import metrics
from server.errors import DatabaseUnavailable
from server.runner import Runner
from server.store import Store

logger = logging.getLogger(__name__)
REAP_BATCH = 100
PRUNE_BATCH = 5_000
PRUNE_EVERY = 60.0


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        *,
        lease_seconds: float,
        retention_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.runner = runner
        self.lease_seconds = lease_seconds
        # Renew three times per lease; reap at least as often, and at least every 5 seconds.
        self.interval = min(lease_seconds / 3, 5.0)
        self.retention_seconds = retention_seconds  # 0: keep events forever
        self._last_prune = 0.0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew_once()
                await self.reap_once()
                await self.prune_now_and_then()
            except DatabaseUnavailable:
                logger.warning("lease renewal skipped: database unavailable")
            except Exception:
                logger.exception("lease renewal or reaping failed; trying again next tick")

    async def renew_once(self) -> None:
        logs = list(self.runner.flusher.logs.values())
        if not logs:
            return
        running = [(log.placeholder.project_id, log.placeholder.id) for log in logs]
        held = await self.store.renew_leases(self.runner.worker_id, self.lease_seconds, running)
        for _project_id, message_id in running:
            if message_id not in held:
                logger.warning("lost the lease on message %s", message_id)
                self.runner.abandon(message_id)

    async def prune_now_and_then(self) -> None:
        """Retention, once a minute: stored events of messages finished long ago."""
        now = time.monotonic()
        if self.retention_seconds <= 0 or now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        while deleted := await self.store.prune_events(self.retention_seconds, PRUNE_BATCH):
            if deleted < PRUNE_BATCH:
                return

    async def reap_once(self) -> None:
        while True:
            reaped = await self.store.reap_expired(REAP_BATCH)
            for message_id in reaped:
                self.runner.abandon(message_id)  # ours, if our own lease ran out
            metrics.LEASES_REAPED.inc(len(reaped))
            metrics.GENERATIONS_FINISHED.labels("error").inc(len(reaped))
            if reaped:
                logger.warning("reaped %d message(s) whose worker stopped", len(reaped))
            if len(reaped) < REAP_BATCH:
                return
