"""Scenario 9, streaming at a model's pace (issue 11): for each database (the run's embedded
PostgreSQL; an external one given by URL) and each build (this one; ``--baseline REV``), a fresh
database and a server with ``WORKERS=2``, ``LEASE_SECONDS=3`` and the demo generator, then

- a warm-up on each new server: answers streamed for a couple of seconds, then cancelled;
- for N rising until the service saturates: a steady step (N answers open at any moment at 40
  deltas a second, a closed loop measured over a window after a warm-up: the targets' figures),
  then a burst (N answers started at once: what a start-up costs, reported beside it);
- py-spy on the server at the largest N not saturated (this build, one database);
- the long-answer pair: 16 KB answers, and 2 KB ones back to back, at the same N, the same
  faster pace and for the same time, so that their WAL per answer byte compares length alone;
- the reasoning pair (this build): a steady step of answers that reason first (half their pieces
  reasoning) beside one of text alone, at the same N, pieces, pace and bytes: what a reasoning
  phase costs in WAL per answer byte and in pace.

The shapes of the steps are in ``bench.pace.shape``.

After every step the invariants are checked (``bench.pace.check``); a broken one fails the
scenario once everything is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import statistics
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import database
from bench import profile as profiler
from bench.pace.drift import generator_drift
from bench.pace.run import Client
from bench.pace.shape import Shape, burst, steady, waves
from bench.pace.step import Context, run_step
from bench.pace.target import Target
from bench.pace.warmup import warm_up
from bench.plan import PacePlan
from bench.server import ServerProcess
from bench.source import Source

logger = logging.getLogger("bench")
PROJECT_BASE = 3_000_001  # project and user numbers, above those of the other scenarios
CAPACITY_PACE = 1.1
PYTHON_CLIENT_MAX_N = 200


class InvariantBroken(AssertionError):
    """An invariant of the contract did not hold after a model-pace step (see the results)."""


@dataclass(frozen=True, slots=True)
class Build:
    key: str  # "current" or "baseline"
    source: Source
    description: dict[str, Any]


@dataclass
class ModelPace:
    plan: PacePlan
    workdir: Path
    results_dir: Path
    stamp: str
    builds: list[Build]
    targets: list[Target]
    client: Client
    python_client: Client
    profile_on: str | None  # the target whose current build is profiled
    results: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    async def run(self, skipped: dict[str, str]) -> None:
        self.results.update(
            plan=dataclasses.asdict(self.plan),
            client={"kind": self.client.kind, "note": self.client.note},
            builds={b.key: b.description for b in self.builds},
            databases={key: {"skipped": why} for key, why in skipped.items()},
            generator_drift={},
        )
        for build in self.builds:
            drift = await generator_drift(build.source.root, self.plan.deltas, self.plan.delta_ms)
            self.results["generator_drift"][build.key] = drift
            logger.info("model pace: the %s build's demo generator alone: %s", build.key, drift)
        for target in self.targets:
            entry = await target.describe()
            self.results["databases"][target.key] = entry
            entry["builds"] = {}
            try:
                for build in self.builds:
                    logger.info("model pace: %s, %s build", target.label, build.key)
                    entry["builds"][build.key] = await self.run_build_or_fail(target, build)
            finally:
                await target.drop()
        self.results["invariants_ok"] = not self.broken
        if self.broken:
            raise InvariantBroken("; ".join(self.broken[:5]))
        if self.failed:
            raise RuntimeError("; ".join(self.failed))

    async def run_build_or_fail(self, target: Target, build: Build) -> dict[str, Any]:
        """One build on one database; a failure is recorded and the others still run."""
        try:
            return await self.run_build(target, build)
        except Exception as exc:
            logger.exception("model pace: %s, %s build failed", target.label, build.key)
            self.failed.append(f"{target.key}/{build.key}: {exc!r}"[:500])
            return {"error": f"{type(exc).__name__}: {exc}"[:2000]}

    async def run_build(self, target: Target, build: Build) -> dict[str, Any]:
        ctx = await self.context(target, build)
        out: dict[str, Any] = {"database": ctx.url.rsplit("/", 1)[-1], "sweep": [], "bursts": []}
        if isinstance(ctx.wal_files, str):
            out["wal_records"] = ctx.wal_files
            logger.info("model pace: no WAL by kind of record on %s: %s", target.label, out)
        plan = self.plan
        async with self.server(ctx, build, "sweep", self.steady(plan.counts[0])) as server:
            for n in plan.counts:
                step = await self.step(ctx, server, self.steady(n), f"n{n}")
                out["sweep"].append(step)
                if self.compare_here(target, build, out, n):
                    out["python_client"] = await self.step(
                        ctx, server, self.steady(n), f"py{n}", self.python_client
                    )
                why = saturated(step, plan.saturation_pace)
                if why:  # a burst past saturation would only say the same louder
                    out["stopped"] = {"n": n, "why": why}
                    break
                out["bursts"].append(await self.step(ctx, server, self.burst(n), f"b{n}"))
            out["capacity"] = capacity(out["sweep"])
            if self.profile_on == target.key and build.key == "current" and plan.profile_s > 0:
                out["profiled"] = await self.profiled(ctx, server, target, out["sweep"])
        out["long"] = await self.long_pair(ctx, build)
        if build.key == "current" and plan.reasoning_count > 0:
            out["reasoning"] = await self.reasoning_pair(target, build)
        return out

    def compare_here(self, target: Target, build: Build, out: dict[str, Any], n: int) -> bool:
        """The Python client runs one step too (the first), for its cost beside the C one's;
        not past ``PYTHON_CLIENT_MAX_N`` answers, where it would take a core from the server."""
        return (
            self.plan.compare_clients
            and n <= PYTHON_CLIENT_MAX_N
            and self.client.kind == "c"
            and target is self.targets[0]
            and build.key == "current"
            and "python_client" not in out
        )

    async def context(self, target: Target, build: Build, database_of: str = "") -> Context:
        """``build``'s fresh database on ``target`` (``database_of``: one more, for that step)."""
        url = await target.create(
            f"{build.key}_{database_of}" if database_of else build.key, build.source.root
        )
        numbers = list(range(PROJECT_BASE, PROJECT_BASE + self.plan.projects))
        tokens = await database.seed(url, numbers)
        projects = [database.project_id(n) for n in numbers]
        by_project = {database.project_id(n): tokens[n] for n in numbers}
        postmaster = await target.postmaster_pid()
        if postmaster is None:
            logger.warning(
                "model pace: no postmaster found for %s: no PostgreSQL CPU", target.label
            )
        wal_files = await target.wal_files(url)
        nodes = await target.node_postmasters()
        return Context(
            target, build.key, url, numbers, projects, by_project, postmaster, wal_files, nodes
        )

    def steady(self, n: int) -> Shape:
        p = self.plan
        return steady(n, p.deltas, p.delta_ms, p.delta_chars, p.measure_answers)

    def burst(self, n: int) -> Shape:
        p = self.plan
        return burst(n, p.deltas, p.delta_ms, p.delta_chars, p.ramp_s, p.burst_window_s)

    def settings(self, deltas: int, delta_ms: int) -> dict[str, str]:
        return {
            "WORKERS": str(self.plan.workers),
            "LEASE_SECONDS": f"{self.plan.lease_seconds:g}",
            "GENERATOR": "demo",
            "DEMO_DELTAS": str(deltas),
            "DEMO_DELTA_MS": str(delta_ms),
        }

    @contextlib.asynccontextmanager
    async def server(
        self, ctx: Context, build: Build, what: str, shape: Shape
    ) -> AsyncIterator[ServerProcess]:
        """A server for steps of ``shape`` (its pace is a setting), warmed up with its N."""
        name = f"pace-{ctx.target.key}-{build.key}-{what}"
        settings = self.settings(shape.server_deltas, shape.delta_ms)
        proc = ServerProcess(name, ctx.url, self.workdir, settings, cwd=build.source.root)
        self.results.setdefault("server_settings", proc.setting_env)
        await asyncio.to_thread(proc.start)
        try:
            if self.plan.warmup_s > 0:
                await warm_up(
                    ctx,
                    proc,
                    shape,
                    self.client,
                    self.workdir,
                    seconds=self.plan.warmup_s,
                    ramp_s=self.plan.ramp_s,
                )
            yield proc
        finally:
            await asyncio.to_thread(proc.stop)

    async def step(
        self,
        ctx: Context,
        server: ServerProcess,
        shape: Shape,
        tag: str,
        client: Client | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        client = client or self.client
        step = await run_step(
            ctx, server, shape, tag, client=client, workdir=self.workdir, on_start=on_start
        )
        if not step["invariants"]["ok"]:
            inv = step["invariants"]
            self.broken.append(
                f"{ctx.target.key}/{ctx.build}/{tag}: answers {inv['answers']['problems']} "
                f"(e.g. {inv['answers']['examples'][:1]}), sequences ok {inv['sequences']['ok']}, "
                f"unfinished {inv['sequences']['unfinished']}"
            )
        return step

    async def long_pair(self, ctx: Context, build: Build) -> dict[str, Any]:
        """Long answers, one per slot; short ones back to back for as long as a long one takes:
        the same N, delta rate, duration and (about) bytes on both sides."""
        p = self.plan
        pair: dict[str, Any] = {}
        seconds = p.long_deltas * p.long_delta_ms / 1000
        for name, deltas in (("short", p.short_deltas), ("long", p.long_deltas)):
            shape = waves(p.long_count, deltas, p.long_delta_ms, p.delta_chars, p.ramp_s, seconds)
            async with self.server(ctx, build, name, shape) as server:
                pair[name] = await self.step(ctx, server, shape, name)
        short, long = pair["short"]["wal_per_answer_byte"], pair["long"]["wal_per_answer_byte"]
        pair["wal_ratio_long_to_short"] = ratio(long, short)
        return pair

    async def reasoning_pair(self, target: Target, build: Build) -> dict[str, Any]:
        """Answers that reason first, beside answers of text alone: steady steps of the same N,
        pieces per answer, pace and (about) bytes per answer. On the thinking side, half of each
        answer's pieces are reasoning (``/think``: the demo's reasoning reads the message back, as
        long as its answer), half text; the bytes per answer count both.

        Each side on a fresh database of its own: on a used one, a step's inserts go to pages
        that earlier steps left with free space, each a full-page image after the step's
        checkpoint (where ``full_page_writes`` is on), so that the side that came second paid for
        the first one's dead rows (11.5 B of full-page images per answer byte against 0.24, on
        PostgreSQL 15 in the run of 2026-12-03 14:09).

        ``reasoning_rounds`` rounds, the sides' order alternating, and the ratios of the sides'
        medians: a side's WAL per answer byte follows how many events each flush batches, which
        moves from run to run (on PostgreSQL 15 on 2026-12-03 the same build's thinking side
        measured 0.86 and 1.14 of its text side's in two runs)."""
        p = self.plan
        rounds: list[dict[str, Any]] = []
        for i in range(p.reasoning_rounds):
            sides = (("text", False), ("thinking", True))
            order = sides if i % 2 == 0 else sides[::-1]
            done: dict[str, Any] = {"order": [name for name, _ in order]}
            for name, think in order:
                ctx = await self.context(target, build, f"{name}{i + 1}")
                shape = steady(
                    p.reasoning_count,
                    p.deltas,
                    p.delta_ms,
                    p.delta_chars,
                    p.measure_answers,
                    think=think,
                )
                async with self.server(ctx, build, f"{name}{i + 1}", shape) as server:
                    done[name] = await self.step(ctx, server, shape, f"{name}{i + 1}")
            done["wal_ratio_thinking_to_text"] = ratio(
                done["thinking"]["wal_per_answer_byte"], done["text"]["wal_per_answer_byte"]
            )
            rounds.append(done)

        medians = {
            side: {
                "wal_per_answer_byte": _median([r[side]["wal_per_answer_byte"] for r in rounds]),
                "pace_p99": _median([r[side]["pace_rows"]["p99"] for r in rounds]),
            }
            for side in ("text", "thinking")
        }
        return {
            "rounds": rounds,
            "medians": medians,
            "wal_ratio_thinking_to_text": ratio(
                medians["thinking"]["wal_per_answer_byte"], medians["text"]["wal_per_answer_byte"]
            ),
            "pace_p99_ratio_thinking_to_text": ratio(
                medians["thinking"]["pace_p99"], medians["text"]["pace_p99"]
            ),
        }

    async def profiled(
        self, ctx: Context, server: ServerProcess, target: Target, sweep: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The largest step not saturated again, with py-spy on the server from 1 s into its
        window."""
        calm = [s for s in sweep if not saturated(s, self.plan.saturation_pace)]
        n = (calm[-1] if calm else sweep[0])["n"]
        output = self.results_dir / f"{self.stamp}-profile-model-pace.txt"
        recording: list[asyncio.Task[str | None]] = []

        async def record() -> str | None:
            await asyncio.sleep(1.0)
            return await profiler.record(server.pid, self.plan.profile_s, output)

        def on_start() -> None:
            recording.append(asyncio.get_running_loop().create_task(record()))

        logger.info("model pace: profiling the server at %d answers", n)
        step = await self.step(ctx, server, self.steady(n), f"prof{n}", on_start=on_start)
        error = await recording[0] if recording else "the client never started"
        what = f"model pace: {n:,} answers at {1000 // self.plan.delta_ms} deltas/s, {target.label}"
        entry: dict[str, Any] = {"what": what, "seconds": self.plan.profile_s}
        if error is None:
            entry.update(profiler.summarize(await asyncio.to_thread(output.read_text)))
            entry["file"] = (await asyncio.to_thread(profiler.compress, output)).name
        else:
            entry["error"] = error
        entry["load"] = {"answers": n, "pace_p99_under_profiler": step["pace_rows"]["p99"]}
        self.profiles["model_pace"] = entry
        return step


def _median(values: list[float | None]) -> float | None:
    """The median of the figures measured (a step may have none)."""
    measured = [v for v in values if v is not None]
    return statistics.median(measured) if measured else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def saturated(step: dict[str, Any], limit: float) -> str | None:
    """Why the steps stop here: p99 pace past ``limit``, answers that failed, broken invariants."""
    p99 = step["pace_rows"]["p99"]
    if step["failures"]:
        return f"{step['failures']} answer(s) did not end well"
    if not step["invariants"]["ok"]:
        return "an invariant broke"
    if p99 is None or p99 > limit:
        return f"p99 pace {p99} > {limit:g}"
    return None


def capacity(sweep: list[dict[str, Any]]) -> int | None:
    """The largest N whose p99 pace is at most 1.1, every answer ending well."""
    good = [
        s["n"]
        for s in sweep
        if s["pace_rows"]["p99"] is not None
        and s["pace_rows"]["p99"] <= CAPACITY_PACE
        and not s["failures"]
    ]
    return max(good) if good else None
