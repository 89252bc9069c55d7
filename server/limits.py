"""This worker's limits: the per-user request rate and the open streams.

Both are per worker process. With ``WORKERS=N`` a user may reach N times the rate across the
deployment; the per-user cap on running generations, which protects the expensive part, is
enforced by the database instead.
"""

from __future__ import annotations

import time
from uuid import UUID

from server import metrics
from server.errors import TooManyRequests, TooManyStreams

_MAX_TRACKED = 100_000


class RateLimiter:
    def __init__(self, *, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[UUID, tuple[float, float]] = {}  # user -> (tokens, last refill)

    def charge(self, user_id: UUID) -> None:
        """Take one request from the user's bucket, or raise ``TooManyRequests``."""
        now = time.monotonic()
        tokens, last = self._buckets.get(user_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            wait = max(1, round((1 - tokens) / self.rate))
            error = TooManyRequests("too many requests; slow down", code="rate_limited")
            error.retry_after = wait
            raise error
        if len(self._buckets) >= _MAX_TRACKED:
            self._buckets.clear()
        self._buckets[user_id] = (tokens - 1, now)


class StreamGauge:
    """This worker's open streams against its limit.

    A request that will answer with a stream takes a slot before anything is reserved and the
    stream holds it until it ends: a burst cannot pass the limit together (the count is taken,
    not just read), and an answer that has started always gets its stream (nothing is checked
    after the reservation)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> StreamSlot:
        if self.open >= self.limit:
            raise TooManyStreams()
        self.open += 1
        metrics.OPEN_STREAMS.inc()
        return StreamSlot(self)

    def _give_back(self) -> None:
        self.open -= 1
        metrics.OPEN_STREAMS.dec()


class StreamSlot:
    """One place under the limit. ``release`` gives it back once, whichever path calls it."""

    def __init__(self, gauge: StreamGauge) -> None:
        self._gauge: StreamGauge | None = gauge

    def release(self) -> None:
        gauge, self._gauge = self._gauge, None
        if gauge is not None:
            gauge._give_back()
