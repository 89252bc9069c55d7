"""Per-user request rate, a token bucket per worker process.

With ``WORKERS=N`` a user may reach N times the rate across the deployment; the per-user cap on
running generations, which protects the expensive part, is enforced by the database instead.
"""

from __future__ import annotations

import time
from uuid import UUID

from server.errors import TooManyRequests

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
