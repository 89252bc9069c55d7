"""How big and how long each scenario is, per mode: full (under 10 minutes on 2 cores), quick
(under 2 minutes) and smoke (seconds, tiny sizes: for the test suite)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    concurrencies: tuple[int, ...]
    warmup_s: float  # per throughput step, before measuring
    measure_s: float  # per throughput step (and per pgbench run)
    spread_projects: int
    first_event_s: float  # open-loop measurement at half the peak rate
    stream_generations: int
    listeners_per_generation: int
    idle_s: float  # open streams left idle with pings
    ping_seconds: float
    history_messages: int
    history_requests: int
    resume_samples: int
    seed_method_s: float  # per concurrency, MAX(sequence)+1 race
    profile_s: float  # py-spy recording under load (0: no profile)
    workers: int = 2  # server workers for the throughput scenarios
    max_requests_per_step: int = 200_000

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FULL = Plan(
    name="full",
    concurrencies=(8, 32, 64, 128),
    warmup_s=2.0,
    measure_s=8.0,
    spread_projects=1000,
    first_event_s=15.0,
    stream_generations=100,
    listeners_per_generation=100,
    idle_s=20.0,
    ping_seconds=5.0,
    history_messages=1_000_000,
    history_requests=3000,
    resume_samples=200,
    seed_method_s=4.0,
    profile_s=10.0,
)

QUICK = dataclasses.replace(
    FULL,
    name="quick",
    concurrencies=(8, 64),
    warmup_s=1.0,
    measure_s=4.0,
    first_event_s=5.0,
    stream_generations=20,
    idle_s=6.0,
    ping_seconds=2.0,
    history_messages=100_000,
    history_requests=800,
    resume_samples=40,
    seed_method_s=2.0,
    profile_s=4.0,
)

SMOKE = dataclasses.replace(
    FULL,
    name="smoke",
    concurrencies=(4,),
    warmup_s=0.5,
    measure_s=1.5,
    spread_projects=20,
    first_event_s=1.5,
    stream_generations=4,
    listeners_per_generation=5,
    idle_s=1.5,
    ping_seconds=0.5,
    history_messages=2_000,
    history_requests=50,
    resume_samples=4,
    seed_method_s=0.5,
    profile_s=0.0,
    workers=1,
)

PLANS = {p.name: p for p in (FULL, QUICK, SMOKE)}
