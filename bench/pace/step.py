"""One model-pace step on a running server (its shape: ``bench.pace.shape``), every answer
streamed to its terminal event by the cheap client; then the WAL (its total, and by kind of
record where the WAL files can be read), the rows and the invariants of every answer sent."""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from bench import database
from bench.pace import check, servermetrics, target, waldump
from bench.pace.figures import failures, step_figures
from bench.pace.prose import prompt_for
from bench.pace.run import Client, Meters, run_client
from bench.pace.shape import Shape
from bench.pace.target import Target
from bench.pace.waldump import WalFiles
from bench.server import ServerProcess
from bench.wire import request_bytes
from server.generators.demo import THINK, demo_answer

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
    wal_files: WalFiles | str  # or why the WAL cannot be read here
    nodes: dict[str, int] = field(default_factory=dict)  # other servers' postmasters (Citus)


def requests(ctx: Context, port: int, shape: Shape, tag: str) -> tuple[list[str], list[bytes]]:
    """The step's idempotency keys and whole HTTP requests: answer i in project i % projects,
    a different prompt of prose each, sized for deltas of ``delta_chars`` (a thinking step's:
    ``/think`` and the prose, whose reasoning, which reads it back, is about as long)."""
    keys, raw = [], []
    head = f"{THINK} " if shape.think else ""
    for i in range(shape.answers):
        key = f"{tag}-{i}"
        project = ctx.projects[i % len(ctx.projects)]
        prose = prompt_for(
            lambda text: demo_answer(head + text), shape.text_chars, zlib.crc32(key.encode())
        )
        prompt = head + prose
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
    roots = {"server": server.pid}
    if ctx.postmaster is not None:
        roots["postgres"] = ctx.postmaster
    roots.update(ctx.nodes)
    workers = {f"worker {i + 1}": pid for i, pid in enumerate(server.worker_pids())}
    wal: dict[str, int] = {}

    async def backends() -> dict[str, Any]:
        return await target.backends(ctx.url)

    watch = servermetrics.Watch(server.port)

    async def edge(name: str) -> None:
        wal[name] = await ctx.target.wal_inserted(ctx.url)
        await watch.edge(name)

    meters = Meters(roots, workers, backends, edge)
    spec_path = workdir / f"pace-{ctx.target.key}-{ctx.build}-{tag}.spec"
    # A checkpoint first: every step starts in the same place of the checkpoint cycle.
    await ctx.target.checkpoint(ctx.url)
    slot = f"orderly_bench_{os.getpid()}_{tag}"
    async with waldump.retained(ctx.url, slot), watch.sampling():
        wal["step_start"] = await ctx.target.wal_inserted(ctx.url)
        run = await run_client(
            client,
            shape.spec(server.port, raw),
            spec_path,
            meters,
            timeout=shape.timeout_s + 30,
            on_start=on_start,
        )
        wal["step_end"] = await ctx.target.wal_inserted(ctx.url)
        if shape.window[0] == 0:  # the client said so once its first answers were on their way
            wal["start"] = wal["step_start"]
        records = await wal_records(ctx, shape, wal)
    found = await check.rows(ctx.url, ctx.projects, tag)
    step = step_figures(run, found, keys, shape, wal=wal, records=records)
    step["server_metrics"] = watch.figures(run.window_us / 1e6)
    checked_from = time.monotonic()
    # Every answer the server may hold: a refused request (an error status) has no row, unless
    # its reply was lost after the commit; then the row is checked like any other. (A refusal
    # still counts as a failure of the step: client_failed.)
    sent = [
        key
        for key, answer in zip(keys, run.answers, strict=True)
        if answer.started and (not answer.refused or key in found)
    ]
    answers = await check.check_answers(server.port, found, sent, ctx.tokens)
    sequences = await database.check_sequences(ctx.url, ctx.numbers)
    step["check_seconds"] = round(time.monotonic() - checked_from, 1)
    step.update(
        tag=tag,
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


async def wal_records(ctx: Context, shape: Shape, wal: dict[str, int]) -> dict[str, Any]:
    """The WAL of the window and of the whole step by kind of record (not for a burst: its
    window is its start-up, whose WAL says nothing the steady state does not)."""
    if shape.kind == "burst":
        return {}
    if isinstance(ctx.wal_files, str):
        return {"error": ctx.wal_files}
    await waldump.written(ctx.url, wal["step_end"])
    ranges = {"window": (wal["start"], wal["end"]), "step": (wal["step_start"], wal["step_end"])}
    if ranges["window"] == ranges["step"]:
        del ranges["step"]
    return {
        name: await waldump.stats(ctx.wal_files, start, end)
        for name, (start, end) in ranges.items()
    }


def log(ctx: Context, step: dict[str, Any]) -> None:
    cpu = step["cpu"]["cores"]
    wal = step["wal"]["window"]
    window = step["window"]
    logger.info(
        "  model pace [%s, %s] %s (%s, window %.1f-%.1f s, %s open, %d answers): pace p50 %s "
        "p99 %s, lag p99 %s ms (before %s, after %s), first delta p99 %s ms, %s events/s, WAL %s "
        "B per answer byte (%s without FPI; whole step %s), cores server %.2f postgres %.2f "
        "client %.2f, failures %d, checks %.0f s%s",
        ctx.target.key,
        ctx.build,
        step["tag"],
        step["kind"],
        window["start_s"],
        window["end_s"],
        window["open_answers"]["mean"],
        step["answers"],
        step["pace_rows"]["p50"],
        step["pace_rows"]["p99"],
        step["lag"]["p99_ms"],
        step["lag_phases"]["before"]["p99_ms"],
        step["lag_phases"]["after"]["p99_ms"],
        step["first_delta_ms"]["p99"],
        f"{step['events_per_s']:,}",
        step["wal_per_answer_byte"],
        wal.get("per_answer_byte_without_fpi", "?"),
        step["wal"]["step"]["per_answer_byte"],
        cpu.get("server", 0.0),
        cpu.get("postgres", 0.0),
        cpu.get("client", 0.0),
        step["failures"],
        step["check_seconds"],
        "" if step["invariants"]["ok"] else ", INVARIANTS BROKEN",
    )
