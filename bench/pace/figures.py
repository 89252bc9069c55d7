"""The figures of one model-pace step, from what the client saw, the message rows and the WAL:
pace, delivery lag, first delta, CPU per event, WAL per answer byte, answers that did not end
well, events per second."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from bench.pace.check import Row
from bench.pace.run import ClientRun
from bench.stats import percentile

LAG_STEP_US = 100


def spread(values: list[float], digits: int = 3) -> dict[str, float | int | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }


def histogram_ms(buckets: dict[int, int]) -> dict[str, float | int | None]:
    """p50/p99/max of the lag histogram (bucket lower edges in us), in ms: each figure is its
    bucket's upper edge, so never below the truth."""
    total = sum(buckets.values())
    out: dict[str, float | int | None] = {"count": total}
    ordered = sorted(buckets.items())
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        rank, seen, value = max(1, math.ceil(q / 100 * total)), 0, None
        for edge, count in ordered:
            seen += count
            if seen >= rank:
                value = (edge + LAG_STEP_US) / 1000
                break
        out[f"{name}_ms"] = None if value is None else round(value, 1)
    return out


def step_figures(
    run: ClientRun,
    found: dict[str, Row],
    keys: list[str],
    *,
    own_seconds: float,
    wal_bytes: int,
) -> dict[str, Any]:
    answers = run.answers
    ok = [a for a in answers if a.terminal == "done" and a.error == "ok"]
    rows = [found[k] for k in keys if k in found]
    succeeded = [r for r in rows if r.status == "success"]
    window = max(run.window_us, 1) / 1e6
    answer_bytes = sum(len(r.content.encode()) for r in rows)
    return {
        "answers": len(answers),
        "own_seconds": own_seconds,
        "pace_rows": spread([r.seconds / own_seconds for r in succeeded]),
        "pace_client": spread([(a.ended - a.first_event) / 1e6 / own_seconds for a in ok]),
        "lag": histogram_ms(run.lags_us),
        "first_delta_ms": spread([(a.first_delta - a.start) / 1000 for a in ok], 1),
        "first_event_ms": spread([(a.first_event - a.start) / 1000 for a in ok], 1),
        "connect_ms": spread([(a.sent - a.start) / 1000 for a in answers if a.sent >= 0], 1),
        "events": run.events,
        "window_s": round(window, 2),
        "events_per_s": round(run.events / window),
        "cpu": cpu_figures(run),
        "wal_bytes": wal_bytes,
        "answer_bytes": answer_bytes,
        "mean_answer_bytes": round(answer_bytes / len(rows)) if rows else None,
        "wal_per_answer_byte": round(wal_bytes / answer_bytes, 1) if answer_bytes else None,
        "client_failed": len(answers) - len(ok),
        "client_errors": dict(Counter(a.error for a in answers if a.error != "ok")),
        "not_done": dict(Counter(a.terminal for a in answers if a.terminal != "done")),
        "rows_not_success": dict(Counter(r.status for r in rows if r.status != "success")),
        "rows_missing": len(keys) - len(rows),
    }


def cpu_figures(run: ClientRun) -> dict[str, Any]:
    """Cores over the window and microseconds of CPU per delivered event, per process tree."""
    cores = run.cores
    named = ("server", "postgres", "client")
    per_event = {
        k: round(cores[k] * run.window_us / run.events, 2)
        for k in named
        if k in cores and run.events
    }
    if run.own_backends_cores is not None and run.events:
        per_event["postgres_own_backends"] = round(
            run.own_backends_cores * run.window_us / run.events, 2
        )
    busy = sum(cores.get(k, 0.0) for k in named)
    return {
        "cores": {k: cores[k] for k in named if k in cores},
        "postgres_own_backends_cores": run.own_backends_cores,
        "machine_cores": cores.get("machine"),
        "other_cores": round(max(0.0, cores.get("machine", 0.0) - busy), 3),
        "irq_steal_cores": round(cores.get("irq", 0.0) + cores.get("steal", 0.0), 3),
        "others": cores.get("others", {}),
        "other_active_backends": run.other_active_backends,
        "workers_cores": run.workers,
        "us_per_event": per_event,
        "client_own_us_per_event": round(run.window_cpu_us / run.events, 3) if run.events else None,
        "client_life_cpu_s": round(run.cpu_us / 1e6, 3),
        "client_max_rss_kib": run.max_rss_kib,
    }


def failures(step: dict[str, Any]) -> int:
    """Answers that did not end well, as the client saw them or as their rows say (the larger)."""
    rows = int(sum(step["rows_not_success"].values())) + int(step["rows_missing"])
    return max(int(step["client_failed"]), rows)
