"""One model-pace step: N answers started at once on a running server, each streamed to its
terminal event by the cheap client; then the WAL, the rows and the invariants."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from bench import database
from bench.pace import check, target
from bench.pace.client import Spec
from bench.pace.figures import failures, step_figures
from bench.pace.prose import prompt_for
from bench.pace.run import Client, Meters, run_client
from bench.pace.target import Target
from bench.server import ServerProcess
from bench.wire import request_bytes
from server.generators.demo import demo_answer

logger = logging.getLogger("bench")


@dataclass(frozen=True, slots=True)
class Context:
    """One build's database on one PostgreSQL, seeded with the scenario's users and projects."""

    target: Target
    build: str
    url: str
    numbers: list[int]
    projects: list[UUID]
    tokens: dict[UUID, str]  # project -> its owner's token
    postmaster: int | None


@dataclass(frozen=True, slots=True)
class Shape:
    """What a step asks for: how many answers, how many deltas each, how fast."""

    n: int
    deltas: int
    delta_ms: int
    delta_chars: int
    ramp_s: float

    @property
    def own_seconds(self) -> float:
        """The generator's own duration: DEMO_DELTAS x DEMO_DELTA_MS."""
        return self.deltas * self.delta_ms / 1000

    @property
    def timeout_s(self) -> float:
        return self.own_seconds * 6 + self.ramp_s + 20


def requests(ctx: Context, port: int, shape: Shape, tag: str) -> tuple[list[str], list[bytes]]:
    """The step's idempotency keys and whole HTTP requests: answer i in project i % projects,
    a different prompt of prose each, sized for deltas of ``delta_chars``."""
    keys, raw = [], []
    chars = shape.deltas * shape.delta_chars
    for i in range(shape.n):
        key = f"{tag}-{i}"
        project = ctx.projects[i % len(ctx.projects)]
        prompt = prompt_for(demo_answer, chars, zlib.crc32(key.encode()))
        body = json.dumps({"message": prompt, "client_request_id": key}).encode()
        path = f"/api/projects/{project}/generations"
        headers = {"Accept": "text/event-stream"}
        keys.append(key)
        raw.append(
            request_bytes("POST", path, port, token=ctx.tokens[project], body=body, headers=headers)
        )
    return keys, raw


async def run_step(
    ctx: Context,
    server: ServerProcess,
    shape: Shape,
    tag: str,
    *,
    client: Client,
    workdir: Path,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    keys, raw = requests(ctx, server.port, shape, tag)
    timeout_ms = round((shape.timeout_s - 10) * 1000)
    spec = Spec(
        "127.0.0.1", server.port, shape.delta_ms * 1000, round(shape.ramp_s * 1e6), timeout_ms, raw
    )
    roots = {"server": server.pid}
    if ctx.postmaster is not None:
        roots["postgres"] = ctx.postmaster
    workers = {f"worker {i + 1}": pid for i, pid in enumerate(server.worker_pids())}

    async def backends() -> dict[str, Any]:
        return await target.backends(ctx.url)

    meters = Meters(roots, workers, backends)
    await target.checkpoint(ctx.url)
    wal_before = await target.wal_position(ctx.url)
    spec_path = workdir / f"pace-{ctx.target.key}-{ctx.build}-{tag}.spec"
    run = await run_client(
        client, spec, spec_path, meters, timeout=shape.timeout_s + 30, on_start=on_start
    )
    wal_after = await target.wal_position(ctx.url)
    found = await check.rows(ctx.url, ctx.projects, tag)
    step = step_figures(
        run, found, keys, own_seconds=shape.own_seconds, wal_bytes=wal_after - wal_before
    )
    checked_from = time.monotonic()
    answers = await check.check_answers(server.port, found, keys, ctx.tokens)
    sequences = await database.check_sequences(ctx.url, ctx.numbers)
    step["check_seconds"] = round(time.monotonic() - checked_from, 1)
    step.update(
        n=shape.n,
        tag=tag,
        deltas=shape.deltas,
        delta_ms=shape.delta_ms,
        offered_events_per_s=round(shape.n * (shape.deltas + 3) / shape.own_seconds),
        client=client.kind,
        reaped={k: v for k, v in answers["outcomes"].items() if k != "success"},
        failures=0,
        invariants={
            "answers": answers,
            "sequences": sequences,
            "ok": bool(answers["ok"] and sequences["ok"] and sequences["unfinished"] == 0),
        },
    )
    step["failures"] = failures(step)
    log(ctx, step)
    return step


def log(ctx: Context, step: dict[str, Any]) -> None:
    cpu = step["cpu"]["cores"]
    logger.info(
        "  model pace [%s, %s] %s: pace p50 %s p99 %s, lag p99 %s ms, first delta p99 %s ms, "
        "%s events/s, WAL %s B per answer byte, cores server %.2f postgres %.2f client %.2f, "
        "failures %d%s",
        ctx.target.key,
        ctx.build,
        step["tag"],
        step["pace_rows"]["p50"],
        step["pace_rows"]["p99"],
        step["lag"]["p99_ms"],
        step["first_delta_ms"]["p99"],
        f"{step['events_per_s']:,}",
        step["wal_per_answer_byte"],
        cpu.get("server", 0.0),
        cpu.get("postgres", 0.0),
        cpu.get("client", 0.0),
        step["failures"],
        "" if step["invariants"]["ok"] else ", INVARIANTS BROKEN",
    )
