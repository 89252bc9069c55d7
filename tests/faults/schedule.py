"""The fault schedule of a run, drawn from its seed, and the loop that carries it out.

Every run injects each kind of fault at least once, in an order and at times drawn from the seed,
plus a few more of the cheap kinds in longer runs. The faults follow one another (one slot each
in the window), with quiet time in between so that the clients make progress, and the schedule
ends healed: the proxy passes everything and PostgreSQL is up.

One slot, placed by the seed, is the long outage: every connection refused for
``LEASE_SECONDS + 2`` s, so that every worker's heartbeat expires, then, at once, a burst of new
answers (``FaultRunner.outage_over`` tells the burst's clients when). Its slot is long enough for
the burst to run before the next fault.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Protocol

from tests.faults.proxy import FaultProxy

LEASE_SECONDS = 3.0  # the servers' lease: the schedule's outages are drawn around it
KINDS = ("cut", "lose_replies", "delay", "refuse", "restart_postgres", "stall")
EXTRA_KINDS = ("cut", "lose_replies", "delay", "refuse", "stall")
LONG_OUTAGE = LEASE_SECONDS + 2.0
BURST_ROOM = 3.0  # quiet time after the long outage, for the burst of new answers


@dataclass(frozen=True, slots=True)
class Fault:
    at: float  # seconds after the run began
    kind: str
    seconds: float  # how long it lasts; a cut is instant
    amount: float = 0.0  # cut, stall: share of connections; lose_replies: rate; delay: s
    mode: str = ""  # restart_postgres: pg_ctl's shutdown mode

    def __str__(self) -> str:
        what = {
            "cut": f"cut {self.amount:.0%} of the connections",
            "lose_replies": f"lose {self.amount:.0%} of the replies for {self.seconds:.1f}s",
            "delay": f"delay replies by {self.amount * 1000:.0f}ms for {self.seconds:.1f}s",
            "refuse": f"cut every connection and refuse new ones for {self.seconds:.1f}s",
            "restart_postgres": f"stop PostgreSQL ({self.mode}) for {self.seconds:.1f}s",
            "stall": f"leave {self.amount:.0%} of the connections half-open for "
            f"{self.seconds:.1f}s, then reset them",
            "long_outage": f"cut every connection and refuse new ones for {self.seconds:.1f}s "
            "(longer than the lease), then a burst of new answers",
        }[self.kind]
        return f"at {self.at:5.2f}s: {what}"


def fault_schedule(seed: int, window: float) -> list[Fault]:
    """The faults of a run of ``window`` seconds: the same list for the same seed and window."""
    rng = random.Random(f"schedule:{seed}")
    kinds = [*KINDS, *(rng.choice(EXTRA_KINDS) for _ in range(max(0, round(window / 10))))]
    rng.shuffle(kinds)
    kinds.insert(rng.randrange(1, len(kinds) + 1), "long_outage")  # never first: work runs
    long_slot = LONG_OUTAGE + BURST_ROOM + 1.0
    slot = max(1.0, (window - long_slot) / (len(kinds) - 1))
    faults, start = [], 0.0
    for kind in kinds:
        if kind == "long_outage":
            faults.append(Fault(round(start + 0.5, 2), kind, LONG_OUTAGE))
            start += long_slot
        else:
            faults.append(_draw(rng, kind, start, slot))
            start += slot
    return faults


def _draw(rng: random.Random, kind: str, start: float, slot: float) -> Fault:
    at = round(start + rng.uniform(0.1, 0.3) * slot, 2)
    seconds = round(rng.uniform(0.4, 0.7) * slot, 2)
    if kind == "cut":
        return Fault(at, kind, 0.0, round(rng.uniform(0.3, 1.0), 2))
    if kind == "lose_replies":
        return Fault(at, kind, seconds, round(rng.uniform(0.1, 0.4), 2))
    if kind == "delay":
        return Fault(at, kind, seconds, round(rng.uniform(0.05, 0.5), 2))
    if kind == "refuse":
        return Fault(at, kind, seconds)
    if kind == "stall":
        # Half-open for longer than the lease: a statement that waits on one without a timeout
        # of its own outlives its worker's heartbeat, though the worker's other connections
        # (and new ones) reach the database all along.
        return Fault(at, kind, LEASE_SECONDS + 1.0, round(rng.uniform(0.2, 0.6), 2))
    # Outages from well under to well over a 3 s lease: some answers live through them, others
    # are ended by the reaper while their worker still runs them.
    downtime = round(rng.uniform(0.5, 5.0), 2)
    return Fault(at, kind, downtime, mode=rng.choice(("fast", "immediate")))


class Restartable(Protocol):
    """The database that ``restart_postgres`` stops and starts: the suite's own PostgreSQL
    (``EmbeddedPostgres``), or on Citus the coordinator (``tests/citus_cluster.py``)."""

    def is_running(self) -> bool: ...

    def start(self) -> str: ...

    def stop(self, mode: str = "fast") -> None: ...


class FaultRunner:
    """Carries out a schedule against a proxy and the PostgreSQL behind it; keeps a log."""

    def __init__(self, proxy: FaultProxy, postgres: Restartable, began: float) -> None:
        """``began``: the run's start, in ``time.monotonic()`` seconds."""
        self.proxy = proxy
        self.postgres = postgres
        self.began = began
        self.log: list[str] = []
        self.outage_over = asyncio.Event()  # the long outage has ended (or the run has)
        self.outage_ended: float | None = None  # when it ended, in time.monotonic() seconds

    def _now(self) -> float:
        return time.monotonic() - self.began

    async def run(self, schedule: list[Fault]) -> None:
        try:
            for fault in schedule:
                await asyncio.sleep(max(0.0, fault.at - self._now()))
                started = self._now()
                await self._apply(fault)
                self.log.append(f"{started:6.2f}s to {self._now():6.2f}s  {fault}")
        finally:
            await self.heal()

    async def heal(self) -> None:
        self.outage_over.set()
        self.proxy.heal()
        if not self.postgres.is_running():
            await asyncio.to_thread(self.postgres.start)

    async def _apply(self, fault: Fault) -> None:
        if fault.kind == "cut":
            self.proxy.cut(fault.amount)
        elif fault.kind == "stall":
            self.proxy.stall(fault.amount, fault.seconds)
        elif fault.kind == "long_outage":
            self.proxy.refusing = True
            self.proxy.cut(1.0)
            await asyncio.sleep(fault.seconds)
            self.proxy.heal()
            self.outage_ended = time.monotonic()
            self.outage_over.set()
        elif fault.kind == "restart_postgres":
            await asyncio.to_thread(self.postgres.stop, fault.mode)
            await asyncio.sleep(fault.seconds)
            await asyncio.to_thread(self.postgres.start)
        else:
            if fault.kind == "lose_replies":
                self.proxy.lose_rate = fault.amount
            elif fault.kind == "delay":
                self.proxy.reply_delay = fault.amount
            else:  # refuse: everyone must reconnect, and cannot for a while
                self.proxy.refusing = True
                self.proxy.cut(1.0)
            await asyncio.sleep(fault.seconds)
            self.proxy.heal()
