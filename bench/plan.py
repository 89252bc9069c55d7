"""How big and how long each scenario is, per mode: full (under 25 minutes on 2 cores with the
model-pace scenario on two databases and the Citus step), quick (a few minutes) and smoke
(seconds, tiny sizes: for the test suite)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PacePlan:
    """The model-pace scenario (9): answers streamed at a model's pace, many at once."""

    counts: tuple[int, ...]  # concurrent answers, one steady step (and one burst) each
    deltas: int  # DEMO_DELTAS of the steps
    delta_ms: int  # DEMO_DELTA_MS of the steps (25: 40 deltas a second)
    long_count: int  # concurrent answers of the long-answer pair
    long_deltas: int  # deltas of the long answer (3,300 of 5 characters: 16.5 KB)
    short_deltas: int  # deltas of its short companion, at the same pace, run back to back
    long_delta_ms: int
    profile_s: float  # py-spy at the largest step not saturated (0: none)
    compare_clients: bool  # one step again with the Python client, for its cost
    projects: int = 200  # answer i goes to project i % projects
    delta_chars: int = 5
    # A steady step: one answer duration of warm-up, then a window this many answer durations
    # long (and the drain: the answers open at its end run to their end, unmeasured).
    measure_answers: float = 2.0
    burst_window_s: float = 3.0  # a burst's figures over its first seconds
    ramp_s: float = 0.5  # the answers of a burst (and of each side of the pair) start over this
    warmup_s: float = 2.0  # each server streams this long, then cancels, before its first step
    saturation_pace: float = 2.0  # stop the steps past this p99 pace (or at any failure)
    workers: int = 2
    lease_seconds: float = 3.0
    reasoning_count: int = 1000  # the reasoning pair's N (0: no pair)
    # The pair's rounds, each side on a fresh database, in alternating order; its figures are
    # each side's median (a side's WAL per byte moves by up to 15% from run to run with how the
    # flusher's batches fall).
    reasoning_rounds: int = 3


@dataclass(frozen=True, slots=True)
class CitusPlan:
    """The Citus step (issue 19): one steady model-pace step on a local Citus cluster and on
    the single PostgreSQL beside it, then pgbench on the service's statements on both."""

    answers: int  # concurrent answers of the steady step (the targets are set at 1,000)
    pgbench_clients: tuple[int, ...]
    pgbench_s: float
    workers: int = 2  # Citus worker nodes beside the coordinator


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
    pace: PacePlan
    workers: int = 2  # server workers for the throughput scenarios
    max_requests_per_step: int = 200_000
    citus: CitusPlan = CitusPlan(answers=1000, pgbench_clients=(8, 32), pgbench_s=8.0)

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
    pace=PacePlan(
        counts=(100, 200, 500, 1000, 2000),
        deltas=400,
        delta_ms=25,
        long_count=100,
        long_deltas=3300,
        short_deltas=412,  # 2 KB; 8 of them back to back take as long as one long answer
        long_delta_ms=5,
        profile_s=8.0,
        compare_clients=True,
    ),
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
    pace=PacePlan(
        counts=(100, 500),
        deltas=200,
        delta_ms=25,
        long_count=50,
        long_deltas=3300,
        short_deltas=412,
        long_delta_ms=5,
        profile_s=3.0,
        compare_clients=False,
        reasoning_count=500,
        reasoning_rounds=1,
    ),
    citus=CitusPlan(answers=500, pgbench_clients=(8,), pgbench_s=4.0),
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
    pace=PacePlan(
        counts=(5,),
        deltas=80,
        delta_ms=25,
        long_count=3,
        long_deltas=400,
        short_deltas=80,
        long_delta_ms=5,
        profile_s=0.0,
        compare_clients=True,
        projects=3,
        burst_window_s=1.0,
        ramp_s=0.1,
        warmup_s=0.5,
        reasoning_count=5,
        reasoning_rounds=2,
    ),
    citus=CitusPlan(answers=5, pgbench_clients=(2,), pgbench_s=1.5),
)

PLANS = {p.name: p for p in (FULL, QUICK, SMOKE)}
