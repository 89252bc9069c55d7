"""This worker's hold on its running answers: one row in ``workers``, renewed on a timer.

A running message names the worker that writes it (``messages.lease_owner``); it stays that
worker's while the worker's heartbeat has not expired. The heartbeat is renewed every
``min(LEASE_SECONDS / 3, 5 s)`` on a connection of its own, and never touches a message row: it
cannot wait behind the flusher's writes, nor behind a pool that the load has exhausted.

Each renewal must end within that same interval (``TimedConnection``): one stuck on a half-open
connection is abandoned with its connection, and the next starts on time on a fresh one. So a
stalled network path costs one renewal, never the lease.

A heartbeat that expired is never extended (the reapers may already be closing its messages): the
worker gives those answers up and carries on under a new identity. The worker also knows, by its
own clock, when its identity can no longer be trusted: once a lease has passed since the last
renewal that succeeded began, less one renewal interval (the database's ``expires_at`` is no
earlier than that; the interval is the margin an answer taken now needs to see the next renewal),
it takes no new answer under it (``current`` refuses), and it renews or registers again as soon as
the database answers, not at the next tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TypeVar
from uuid import UUID, uuid4

from server import metrics
from server.db import TimedConnection
from server.errors import DatabaseUnavailable, WorkerUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

# While the identity is not trusted (not registered, or a lease since its last renewal), attempts
# follow one another this closely at first, doubling up to RETRY_MAX_SECONDS: soon after the
# database answers again, the worker takes answers again.
RETRY_MIN_SECONDS = 0.05
RETRY_MAX_SECONDS = 0.5
# A failed attempt is logged once, then once per this many in a row.
LOG_EVERY_FAILURES = 20


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
        # Each statement (a renewal, a registration) within one interval: a stuck one never
        # delays the next.
        self._db = TimedConnection(url, timeout=self.interval)
        # A second connection for a renewal that the first has not answered in time (``_renew``).
        self._spare = TimedConnection(url, timeout=self.interval)
        # Monotonic time until which the identity is surely alive in the database: the start of
        # the last renewal (or registration) that succeeded, plus the lease.
        self._trusted_until = 0.0
        self._failures = 0  # attempts in a row that failed (for the log)

    @property
    def trusted(self) -> bool:
        """Registered, and alive in the database for at least one more renewal interval: a
        healthy worker renews every interval, so it always is; one that could not renew for
        longer than ``LEASE_SECONDS`` less an interval takes no new answer (regression: an answer
        reserved in the last moments of an identity whose renewals had failed was reaped
        ``interrupted`` a few hundred milliseconds later, on a worker that reached the database;
        fault suite seed 1)."""
        return self.registered and time.monotonic() < self._trusted_until - self.interval

    def current(self) -> UUID:
        """The identity under which new answers are taken (and written); refused while it may
        have expired."""
        if not self.registered:
            raise WorkerUnavailable("this worker's heartbeat is not registered yet")
        if not self.trusted:
            raise WorkerUnavailable(
                "this worker's heartbeat was not renewed within the lease (the database is or "
                "was away); it is renewing it or registering again: retry"
            )
        return self.id

    async def open(self) -> None:
        """Connect and register (safe to call again after it failed)."""
        await self._register()

    async def close(self) -> None:
        """Stopping: whatever this worker still holds is for the reapers to close now."""
        try:
            await self._db.fetch("expire_worker", self.id)
        except DatabaseUnavailable:
            logger.warning("could not expire the heartbeat on the way out")
        finally:
            await self._db.close()
            await self._spare.close()

    async def run(self) -> None:
        """Renew on a fixed schedule: a slow renewal (at most one interval) never pushes the next
        one back. After a failed attempt, or once the identity is not trusted, try again at once,
        then every fraction of a second until the database answers: waiting a whole interval
        after a renewal abandoned on a half-open connection left too little of the lease for the
        next one to reconnect in (fault suite seed 2)."""
        due = time.monotonic() + self.interval
        retry = RETRY_MIN_SECONDS
        while True:
            if self.trusted and not self._failures:
                retry = RETRY_MIN_SECONDS
                now = time.monotonic()
                if now < due:
                    # Wake at the next tick, or when the trust runs out if that comes first.
                    await asyncio.sleep(min(due, self._trusted_until - self.interval) - now)
                    if time.monotonic() < due:
                        continue
                due = max(due + self.interval, time.monotonic())
            else:
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_SECONDS)
                due = time.monotonic() + self.interval
            try:
                await self.beat()
            except Exception:
                logger.exception("heartbeat failed; trying again")

    async def beat(self) -> None:
        if not self.registered:
            await self._register_or_warn()
            return
        started = time.monotonic()
        try:
            held = await self._renew()
        except DatabaseUnavailable:
            self._failed("not renewed")
            return
        self._failures = 0
        metrics.HEARTBEAT_SECONDS.observe(time.monotonic() - started)
        if held:
            self._trusted_until = started + self.lease_seconds
            return
        metrics.HEARTBEAT_EXPIRED.inc()
        expired, self.registered = self.id, False
        logger.error(
            "heartbeat %s expired before it was renewed: its running answers are given up", expired
        )
        self.on_expired(expired)
        await self._register_or_warn()

    async def _renew(self) -> bool:
        """Extend the identity; False if it had expired. Hedged: a renewal not answered within
        half an interval (a half-open connection answers never) is sent again on the other
        connection, and the first answer wins; the other attempt is abandoned with its
        connection. Renewing twice is harmless (the statement only moves ``expires_at``).

        Regression (fault suite seed 2): a renewal stuck on a half-open connection cost a whole
        interval before the next one tried a fresh connection, and a short outage then took the
        rest of the lease from a worker whose other connections reached the database all along.
        """
        attempts = [asyncio.ensure_future(self._db.fetch("renew_worker", *self._renewal))]
        done, _ = await asyncio.wait(attempts, timeout=self.interval / 2)
        if not done:
            self._db, self._spare = self._spare, self._db  # the stuck one is the spare now
            attempts.append(asyncio.ensure_future(self._db.fetch("renew_worker", *self._renewal)))
        try:
            rows = await _first_success(attempts)
        finally:
            for attempt in attempts:
                attempt.cancel()  # a TimedConnection drops the connection of a cancelled statement
        return bool(rows)

    @property
    def _renewal(self) -> tuple[UUID, float]:
        return self.id, self.lease_seconds

    async def _register_or_warn(self) -> None:
        try:
            await self._register()
        except DatabaseUnavailable:
            self._failed("not registered")

    def _failed(self, what: str) -> None:
        # While the identity is not trusted, attempts come every fraction of a second: say so
        # once, and then now and then (the metric counts every one).
        metrics.HEARTBEAT_FAILURES.inc()
        self._failures += 1
        if self._failures % LOG_EVERY_FAILURES == 1:
            logger.warning(
                "heartbeat %s: database unavailable, or no answer within %.1fs (%d in a row)",
                what,
                self.interval,
                self._failures,
            )

    async def _register(self) -> None:
        """Register under a new identity (never an old one: an attempt whose reply was lost may
        have written it, and an expired identity must stay expired)."""
        candidate = uuid4()
        started = time.monotonic()
        await self._db.fetch(
            "register_worker", candidate, self.lease_seconds, socket.gethostname(), os.getpid()
        )
        self.id, self.registered = candidate, True
        self._trusted_until = started + self.lease_seconds
        self._failures = 0


async def _first_success(attempts: Sequence[asyncio.Future[T]]) -> T:
    """The result of the first of ``attempts`` to succeed; the last error if none does."""
    pending: set[asyncio.Future[T]] = set(attempts)
    errors: list[BaseException] = []
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for attempt in done:
            error = attempt.exception()
            if error is None:
                return attempt.result()
            errors.append(error)
    raise errors[-1]
