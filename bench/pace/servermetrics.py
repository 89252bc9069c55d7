"""What the server says of itself over a step's window: its ``/metrics`` read at the window's
edges (the flusher's statements: how long, how many messages each, events written; the time to
the first event; the heartbeats), and its pool gauges sampled every second in between. The
harness reads them to tell where a delay comes from: the flush (a delta reaches its listener
only once written), the reservations (the pool), or the machine."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from bench.wire import Connection, request_bytes

SAMPLE_S = 1.0
LINE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
HISTOGRAMS = {
    "flush_s": "orderly_flush_seconds",
    "flush_messages": "orderly_flush_batch_messages",
    "first_event_s": "orderly_time_to_first_event_seconds",
    "heartbeat_s": "orderly_heartbeat_seconds",
    "loop_lag_s": "orderly_event_loop_lag_seconds",
    "gc_pause_s": "orderly_gc_pause_seconds",
}
COUNTERS = {
    "events_flushed": "orderly_events_flushed_total",
    "flush_failures": "orderly_flush_failures_total",
}
GAUGES = {
    "pool_waiting": "orderly_db_pool_waiting",
    "pool_in_use": "orderly_db_pool_in_use",
    "running": "orderly_generations_running",
}

Sample = dict[tuple[str, str], float]  # (name, labels) -> value


async def scrape(port: int) -> Sample:
    conn = await Connection.open(port)
    try:
        raw = request_bytes("GET", "/metrics", port, headers={"Accept": "text/plain"})
        ex = await asyncio.wait_for(conn.request(raw, keep_body=True), 10)
    finally:
        conn.close()
    out: Sample = {}
    for line in bytes(ex.body).decode(errors="replace").splitlines():
        m = LINE.match(line)
        if m is not None:
            with contextlib.suppress(ValueError):
                out[m["name"], m["labels"] or ""] = float(m["value"])
    return out


@dataclass
class Watch:
    """``/metrics`` at the window's edges and the gauges every second between."""

    port: int
    edges: dict[str, Sample] = field(default_factory=dict)
    gauges: list[Sample] = field(default_factory=list)
    error: str | None = None

    async def edge(self, name: str) -> None:
        try:
            self.edges[name] = await scrape(self.port)
        except (OSError, TimeoutError) as exc:
            self.error = f"/metrics: {exc!r}"

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        async def sample() -> None:
            while True:
                await asyncio.sleep(SAMPLE_S)
                if "start" in self.edges and "end" not in self.edges:
                    with contextlib.suppress(OSError, TimeoutError):
                        self.gauges.append(await scrape(self.port))

        task = asyncio.get_running_loop().create_task(sample())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def figures(self, seconds: float) -> dict[str, Any]:
        if self.error or not {"start", "end"} <= self.edges.keys():
            return {"error": self.error or "no /metrics at the window's edges"}
        before, after = self.edges["start"], self.edges["end"]
        out: dict[str, Any] = {k: histogram(before, after, v) for k, v in HISTOGRAMS.items()}
        for key, name in COUNTERS.items():
            out[key] = after.get((name, ""), 0.0) - before.get((name, ""), 0.0)
        out["gc_by_generation"] = {
            gen: histogram(before, after, "orderly_gc_pause_seconds", f'generation="{gen}"')
            for gen in ("0", "1", "2")
        }
        out["flushes_per_s"] = round(out["flush_s"]["count"] / max(seconds, 1e-9), 1)
        out["events_flushed_per_s"] = round(out.pop("events_flushed") / max(seconds, 1e-9))
        for key, name in GAUGES.items():
            values = [g.get((name, ""), 0.0) for g in self.gauges]
            out[key] = {
                "mean": round(sum(values) / len(values), 1) if values else None,
                "max": max(values) if values else None,
                "samples": len(values),
            }
        return out


def histogram(before: Sample, after: Sample, name: str, only: str = "") -> dict[str, Any]:
    """The histogram's observations between two samples: count, mean, and p50/p99 as the upper
    bound of their bucket (the server's buckets are coarse: say so when reading them). ``only``:
    the series whose labels contain it (all by default)."""
    buckets: dict[float, float] = {}
    for (metric, labels), value in after.items():
        if metric != f"{name}_bucket" or only not in labels:
            continue
        le = re.search(r'le="([^"]+)"', labels)
        if le is not None:
            bound = math.inf if le[1] == "+Inf" else float(le[1])
            buckets[bound] = buckets.get(bound, 0.0) + value - before.get((metric, labels), 0.0)
    count = _summed(after, f"{name}_count", only) - _summed(before, f"{name}_count", only)
    total = _summed(after, f"{name}_sum", only) - _summed(before, f"{name}_sum", only)
    out: dict[str, Any] = {
        "count": round(count),
        "mean": round(total / count, 4) if count else None,
    }
    # The slowest observation's bucket (cumulative buckets: the first that holds them all).
    holding = [b for b in sorted(buckets) if count and buckets[b] >= count]
    out["max_le"] = holding[0] if holding and not math.isinf(holding[0]) else None
    for q in (50, 99):
        rank = math.ceil(q / 100 * count)
        found = [b for b in sorted(buckets) if count and buckets[b] >= rank]
        out[f"p{q}_le"] = found[0] if found and not math.isinf(found[0]) else None
    return out


def _summed(sample: Sample, metric: str, only: str = "") -> float:
    """A series summed over its labels (a histogram by GC generation, say)."""
    return sum(
        value for (name, labels), value in sample.items() if name == metric and only in labels
    )
