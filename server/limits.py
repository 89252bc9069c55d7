"""This worker's limits: the per-user request rate, failed token lookups and open streams (in
all, and per user).

All are per worker process. With ``WORKERS=N`` a user may reach N times the rate, and hold N
times ``MAX_STREAMS_PER_USER`` streams, across the deployment; the per-user cap on running
generations, which protects the expensive part, is enforced by the database instead.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable

from server import metrics
from server.errors import TooManyRequests, TooManyStreams, TooManyUserStreams

_WORKER = "worker"  # the key of a worker-wide bucket


class RateLimiter:
    """Token buckets, one per key (a user, a client address), refilling at ``per_minute`` up to
    ``burst``. At most ``max_tracked`` keys are remembered, the least recently used forgotten
    first: one at a time, never all at once (a forgotten bucket comes back full)."""

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int,
        code: str = "rate_limited",
        detail: str = "too many requests; slow down",
        max_tracked: int = 100_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.code = code
        self.detail = detail
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def charge(self, key: Hashable) -> None:
        """Take one request from the key's bucket, or raise ``TooManyRequests``."""
        self.check(key)
        self.take(key)

    def check(self, key: Hashable) -> None:
        """Raise ``TooManyRequests`` if the key's bucket is empty; take nothing."""
        tokens = self._tokens(key, time.monotonic())
        if tokens < 1:
            error = TooManyRequests(self.detail, code=self.code)
            error.retry_after = max(1, math.ceil((1 - tokens) / self.rate))
            raise error

    def take(self, key: Hashable) -> None:
        """Take one from the key's bucket, even past empty (down to ``-burst``): what several
        requests in flight at once overspend is paid back by waiting."""
        now = time.monotonic()
        self._keep(key, max(-self.burst, self._tokens(key, now) - 1), now)

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def _keep(self, key: Hashable, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)


class FailedLookups:
    """Failed token lookups, counted per client address and per worker.

    Looking up a token the worker does not know costs a database query, and anybody can send
    any token. Once a client's address, or the worker as a whole, has failed too often, such
    lookups are refused (429) before they reach the database. Only failures are counted, so
    any number of valid tokens may be looked up at once."""

    def __init__(self, *, per_minute: int, burst: int, worker_per_minute: int) -> None:
        code, detail = "too_many_auth_failures", "too many invalid tokens; retry later"
        self.per_client = RateLimiter(per_minute=per_minute, burst=burst, code=code, detail=detail)
        self.worker = RateLimiter(
            per_minute=worker_per_minute, burst=worker_per_minute, code=code, detail=detail
        )

    def check(self, client: str) -> None:
        self.per_client.check(client)
        self.worker.check(_WORKER)

    def record(self, client: str) -> None:
        self.per_client.take(client)
        self.worker.take(_WORKER)


class StreamGauge:
    """This worker's open streams against its limits: ``limit`` in all, ``per_user`` for each
    user.

    A request that will answer with a stream takes a slot before anything is reserved or read
    and the stream holds it until it ends: a burst cannot pass the limits together (the counts
    are taken, not just read), a refusal costs no query, and an answer that has started always
    gets its stream (nothing is checked after the reservation).

    The per-user count is kept in memory, per worker: a dictionary of the users that hold a
    stream here, updated with the slot (no statement, nothing left behind when a worker dies).
    Every listener on another worker than the writer's reads the table at each of the answer's
    writes, and all the listeners of an answer are its owner's: the cap bounds what one user's
    streams cost a worker's pool."""

    def __init__(self, limit: int, per_user: int) -> None:
        self.limit = limit
        self.per_user = per_user
        self.open = 0
        self._by_user: dict[Hashable, int] = {}  # users holding a stream here; never 0

    def take(self, user: Hashable) -> StreamSlot:
        held = self._by_user.get(user, 0)
        if held >= self.per_user:
            raise TooManyUserStreams()
        if self.open >= self.limit:
            raise TooManyStreams()
        self._by_user[user] = held + 1
        self.open += 1
        metrics.OPEN_STREAMS.inc()
        return StreamSlot(self, user)

    def _give_back(self, user: Hashable) -> None:
        self.open -= 1
        metrics.OPEN_STREAMS.dec()
        held = self._by_user.pop(user) - 1
        if held:
            self._by_user[user] = held


class StreamSlot:
    """One place under the limits. ``release`` gives it back once, whichever path calls it."""

    __slots__ = ("_gauge", "_user")  # one per open stream

    def __init__(self, gauge: StreamGauge, user: Hashable) -> None:
        self._gauge: StreamGauge | None = gauge
        self._user = user

    def release(self) -> None:
        gauge, self._gauge = self._gauge, None
        if gauge is not None:
            gauge._give_back(self._user)
