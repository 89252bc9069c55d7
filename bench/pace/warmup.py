"""A warm-up before a server's first measured step: some answers streamed for a couple of
seconds, then cancelled through the API, and waited for until they are terminal. The first
step then meets a server whose pools are grown and whose statements are prepared, as the later
steps do, instead of paying those once-only costs in its own figures."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from bench.pace import check
from bench.pace.run import Client, Meters, run_client
from bench.pace.shape import Shape, burst
from bench.pace.step import Context, requests
from bench.server import ServerProcess
from bench.wire import Connection, request_bytes

logger = logging.getLogger("bench")
TAG = "warm"


async def warm_up(
    ctx: Context,
    server: ServerProcess,
    like: Shape,
    client: Client,
    workdir: Path,
    *,
    seconds: float,
    ramp_s: float,
) -> dict[str, Any]:
    """``like``'s N answers started over ``ramp_s``, streamed for ``seconds``, cancelled."""
    started = time.monotonic()
    shape = burst(like.n, like.deltas, like.delta_ms, like.delta_chars, ramp_s, ramp_s + seconds)
    keys, raw = requests(ctx, server.port, shape, TAG)
    spec = dataclasses.replace(
        shape.spec(server.port, raw), timeout_ms=round((ramp_s + seconds) * 1000)
    )
    path = workdir / f"pace-{ctx.target.key}-{ctx.build}-{TAG}.spec"

    async def no_backends() -> dict[str, Any]:
        return {"pids": [], "other_active": 0}

    meters = Meters({"server": server.pid}, {}, no_backends)
    await run_client(client, spec, path, meters, timeout=seconds + ramp_s + 60)
    running = await _running(ctx, keys)
    await asyncio.gather(
        *(_cancel(server.port, row, ctx.tokens[row.project_id]) for row in running)
    )
    left = await _wait_terminal(ctx, keys, deadline=time.monotonic() + 30)
    if left:
        raise RuntimeError(f"warm-up: {left} answer(s) still running 30 s after their cancel")
    return {
        "answers": len(keys),
        "cancelled": len(running),
        "seconds": round(time.monotonic() - started, 1),
    }


async def _running(ctx: Context, keys: list[str]) -> list[check.Row]:
    rows = await check.rows(ctx.url, ctx.projects, TAG)
    return [
        r for k in keys if (r := rows.get(k)) is not None and r.status in ("pending", "streaming")
    ]


async def _cancel(port: int, row: check.Row, token: str) -> None:
    path = f"/api/projects/{row.project_id}/messages/{row.id}/cancel"
    raw = request_bytes("POST", path, port, token=token, headers={"Accept": "application/json"})
    conn = await Connection.open(port)
    try:
        await asyncio.wait_for(conn.request(raw), 30)  # 202, or 409 if it ended meanwhile
    finally:
        conn.close()


async def _wait_terminal(ctx: Context, keys: list[str], *, deadline: float) -> int:
    while True:
        left = len(await _running(ctx, keys))
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.2)
