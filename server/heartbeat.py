"""This worker's hold on its running answers: one row in ``workers``, renewed on a timer.

A running message names the worker that writes it (``messages.lease_owner``); it stays that
worker's while the worker's heartbeat has not expired. The heartbeat is renewed every
``min(LEASE_SECONDS / 3, 5 s)`` on a connection of its own, and never touches a message row: it
cannot wait behind the flusher's writes, nor behind a pool that the load has exhausted.

A heartbeat that expired is never extended (the reapers may already be closing its messages): the
worker gives those answers up and carries on under a new identity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from uuid import UUID, uuid4

from server import metrics
from server.db import Database
from server.errors import DatabaseUnavailable, ServiceUnavailable
from server.store import Store

logger = logging.getLogger(__name__)


def renewal_interval(lease_seconds: float) -> float:
    """Three renewals per lease, and at least one every 5 seconds."""
    return min(lease_seconds / 3, 5.0)


class Heartbeat:
    def __init__(
        self, url: str, *, lease_seconds: float, on_expired: Callable[[UUID], None]
    ) -> None:
        self.lease_seconds = lease_seconds
        self.interval = renewal_interval(lease_seconds)
        self.on_expired = on_expired
        self.id = uuid4()
        self.registered = False
        self._db = Database(url, min_size=1, max_size=1)
        self._store = Store(self._db)

    def current(self) -> UUID:
        """The identity under which new answers are taken (and written)."""
        if not self.registered:
            raise ServiceUnavailable("this worker's heartbeat is not registered yet")
        return self.id

    async def open(self) -> None:
        """Connect and register (safe to call again after it failed)."""
        if not self._db.is_open:
            await self._db.open()
        await self._register()

    async def close(self) -> None:
        """Stopping: whatever this worker still holds is for the reapers to close now."""
        try:
            await self._store.expire_worker(self.id)
        except DatabaseUnavailable:
            logger.warning("could not expire the heartbeat on the way out")
        finally:
            await self._db.close()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception:
                logger.exception("heartbeat failed; trying again next tick")

    async def beat(self) -> None:
        if not self.registered:
            await self._register_or_warn()
            return
        started = time.perf_counter()
        try:
            held = await self._store.renew_worker(self.id, self.lease_seconds)
        except DatabaseUnavailable:
            metrics.HEARTBEAT_FAILURES.inc()
            logger.warning("heartbeat not renewed: database unavailable")
            return
        metrics.HEARTBEAT_SECONDS.observe(time.perf_counter() - started)
        if held:
            return
        metrics.HEARTBEAT_EXPIRED.inc()
        expired, self.registered = self.id, False
        logger.error(
            "heartbeat %s expired before it was renewed: its running answers are given up", expired
        )
        self.on_expired(expired)
        await self._register_or_warn()

    async def _register_or_warn(self) -> None:
        try:
            await self._register()
        except DatabaseUnavailable:
            metrics.HEARTBEAT_FAILURES.inc()
            logger.warning("heartbeat not registered: database unavailable")

    async def _register(self) -> None:
        """Register under a new identity (never an old one: an attempt whose reply was lost may
        have written it, and an expired identity must stay expired)."""
        candidate = uuid4()
        await self._store.register_worker(
            candidate, self.lease_seconds, socket.gethostname(), os.getpid()
        )
        self.id, self.registered = candidate, True
