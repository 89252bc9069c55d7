"""The figures of one model-pace step, from what the client saw, the message rows and the WAL.

Over the step's *window* (``bench.pace.shape``): the delivery lag of the deltas that arrived in
it, events per second, CPU per event, and WAL per answer byte (the WAL inserted between its
edges over the bytes of the deltas delivered in it). Over the answers it measures: in a steady
step, first delta over the answers that started in the window, pace over those that started
early enough to end in it at the generator's own pace; in a burst or waves, every answer. Also
the lag before and after the window and by second of arrival, the answers open at once over the
window, and the answers that did not end well (any of the step's, window or not)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from bench.pace.check import Row
from bench.pace.run import Answer, ClientRun
from bench.pace.shape import Shape
from bench.stats import percentile

LAG_STEP_US = 100
PHASES = {0: "before", 1: "window", 2: "after"}
NODE_PREFIX = "postgres node "  # the CPU of a Citus cluster's worker nodes, by port


def spread(values: list[float], digits: int = 3) -> dict[str, float | int | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }


def coarse_width(edge: int) -> int:
    """The width of a bucket of the lags by second (see ``bench/pace/client.py``)."""
    return 1000 if edge < 1_000_000 else 100_000


def histogram_ms(
    buckets: dict[int, int], width: Any = LAG_STEP_US, quantiles: tuple[int, ...] = (50, 90, 99)
) -> dict[str, float | int | None]:
    """Percentiles and max of a lag histogram (bucket lower edges in us), in ms: each figure is
    its bucket's upper edge, so never below the truth. ``width``: the buckets' width, or a
    function of the lower edge giving it."""
    total = sum(buckets.values())
    out: dict[str, float | int | None] = {"count": total}
    ordered = sorted(buckets.items())
    for name, q in (*((f"p{q}", q) for q in quantiles), ("max", 100)):
        rank, seen, value = max(1, math.ceil(q / 100 * total)), 0, None
        for edge, count in ordered:
            seen += count
            if seen >= rank:
                step = width(edge) if callable(width) else width
                value = (edge + step) / 1000
                break
        out[f"{name}_ms"] = None if value is None else round(value, 1)
    return out


def lag_by_second(run: ClientRun) -> list[list[float | int | None]]:
    """``[second, deltas, p50 ms, p99 ms]`` for each second of the step (from the client's
    start) in which deltas arrived; 1 ms buckets below 1 s, 100 ms above."""
    rows = []
    for second in sorted(run.lags_by_second):
        h = histogram_ms(run.lags_by_second[second], coarse_width, (50, 99))
        rows.append([second, h["count"], h["p50_ms"], h["p99_ms"]])
    return rows


def measured(shape: Shape, answers: list[Answer]) -> tuple[list[int], list[int]]:
    """The answers (indices) whose first delta, and whose pace, the step reports."""
    sent = [i for i, a in enumerate(answers) if a.started]
    if shape.kind != "steady":
        return sent, sent
    start, end = (round(t * 1e6) for t in (shape.window[0], shape.window[1] or 0))
    last = end - round(shape.own_seconds * 1e6)
    first_delta = [i for i in sent if start <= answers[i].start < end]
    return first_delta, [i for i in first_delta if answers[i].start <= last]


def concurrency(answers: list[Answer], start: int, end: int) -> dict[str, float | None]:
    """Answers open over ``[start, end)`` (us): the mean, and the least and most of every
    100 ms."""
    spans = [(a.start, a.ended if a.ended >= 0 else end) for a in answers if a.started]
    if end <= start:
        return {"mean": None, "min": None, "max": None}
    busy = sum(max(0, min(e, end) - max(s, start)) for s, e in spans)
    samples = [sum(s <= t < e for s, e in spans) for t in range(start, end, 100_000)]
    return {"mean": round(busy / (end - start), 1), "min": min(samples), "max": max(samples)}


def step_figures(
    run: ClientRun,
    found: dict[str, Row],
    keys: list[str],
    shape: Shape,
    *,
    wal: dict[str, int],
    records: dict[str, Any],
) -> dict[str, Any]:
    answers = run.answers
    own = shape.own_seconds
    first_delta, paced = measured(shape, answers)
    ok = {i for i, a in enumerate(answers) if a.terminal == "done" and a.error == "ok"}
    rows = [found[k] for k, a in zip(keys, answers, strict=True) if a.started and k in found]
    succeeded = [found[keys[i]] for i in paced if keys[i] in found]
    succeeded = [r for r in succeeded if r.status == "success"]
    window_s = max(run.window_us, 1) / 1e6
    return {
        "kind": shape.kind,
        "n": shape.n,
        "deltas": shape.deltas,
        "delta_ms": shape.delta_ms,
        "offered_events_per_s": round(shape.n * (shape.deltas + 3) / own),
        "answers": sum(a.started for a in answers),
        "own_seconds": own,
        "window": window_figures(run, shape),
        "measured_answers": {"first_delta": len(first_delta), "pace": len(paced)},
        "pace_rows": spread([r.seconds / own for r in succeeded]),
        "pace_client": spread(
            [(answers[i].ended - answers[i].first_event) / 1e6 / own for i in paced if i in ok]
        ),
        "lag": histogram_ms(run.lags_by_phase.get(1, {})),
        "lag_phases": {
            name: histogram_ms(run.lags_by_phase.get(p, {})) for p, name in PHASES.items()
        },
        "lag_by_second": lag_by_second(run),
        "first_delta_ms": spread(
            [(answers[i].first_delta - answers[i].start) / 1000 for i in first_delta if i in ok], 1
        ),
        "first_event_ms": spread(
            [(answers[i].first_event - answers[i].start) / 1000 for i in first_delta if i in ok], 1
        ),
        "connect_ms": spread([(a.sent - a.start) / 1000 for a in answers if a.sent >= 0], 1),
        "events": run.events,
        "window_events": run.window_events,
        "events_per_s": round(run.window_events / window_s),
        "cpu": cpu_figures(run),
        **wal_figures(run, found, keys, wal, records),
        "client_failed": sum(
            a.error not in ("ok", "unused") or a.terminal != "done"
            for a in answers
            if a.error != "unused"
        ),
        "client_errors": dict(Counter(a.error for a in answers if a.error not in ("ok", "unused"))),
        # The statuses of the requests the server refused (error "http"), by status.
        "refused_statuses": dict(Counter(str(a.status) for a in answers if a.refused)),
        "not_done": dict(
            Counter(a.terminal for a in answers if a.started and a.terminal != "done")
        ),
        "rows_not_success": dict(Counter(r.status for r in rows if r.status != "success")),
        "rows_missing": sum(
            a.started and not a.refused and k not in found
            for k, a in zip(keys, answers, strict=True)
        ),
    }


def window_figures(run: ClientRun, shape: Shape) -> dict[str, Any]:
    start, end = run.window_start_us, run.window_end_us
    return {
        "start_s": round(start / 1e6, 2),
        "end_s": round(end / 1e6, 2),
        "seconds": round((end - start) / 1e6, 2),
        "step_seconds": round(run.end_us / 1e6, 2),
        "open_answers": concurrency(run.answers, start, end),
        "load_seconds": shape.load_seconds,
    }


def wal_figures(
    run: ClientRun,
    found: dict[str, Row],
    keys: list[str],
    wal: dict[str, int],
    records: dict[str, Any],
) -> dict[str, Any]:
    """WAL per answer byte over the window (the headline) and over the whole step (from the
    checkpoint before it to its last answer's end); an answer's bytes (its text and its
    reasoning) count in the window pro rata of its pieces that arrived there."""
    step_bytes = window_bytes = 0.0
    for key, a in zip(keys, run.answers, strict=True):
        row = found.get(key)
        if row is None or not a.started:
            continue
        size = len(row.content.encode()) + len((row.reasoning or "").encode())
        step_bytes += size
        window_bytes += size * a.window_deltas / a.deltas if a.deltas else 0.0
    window_wal, step_wal = wal["end"] - wal["start"], wal["step_end"] - wal["step_start"]
    answers = sum(1 for k, a in zip(keys, run.answers, strict=True) if a.started and k in found)
    return {
        "wal_bytes": window_wal,
        "answer_bytes": round(window_bytes),
        "mean_answer_bytes": round(step_bytes / answers) if answers else None,
        "wal_per_answer_byte": round(window_wal / window_bytes, 2) if window_bytes else None,
        "wal": {
            "window": per_byte(window_wal, window_bytes, records.get("window")),
            "step": per_byte(step_wal, step_bytes, records.get("step") or records.get("window")),
            **({"error": records["error"]} if "error" in records else {}),
        },
    }


def per_byte(wal_bytes: int, answer_bytes: float, records: dict[str, Any] | None) -> dict[str, Any]:
    """WAL per answer byte in all, and without its full-page images, by resource manager."""
    out: dict[str, Any] = {
        "wal_bytes": wal_bytes,
        "answer_bytes": round(answer_bytes),
        "per_answer_byte": round(wal_bytes / answer_bytes, 2) if answer_bytes else None,
    }
    if not records or not answer_bytes:
        return out
    if "error" in records:
        return {**out, "error": records["error"]}
    fpi = records["fpi_bytes"]
    out.update(
        records=records["records"],
        record_bytes=records["record_bytes"],
        fpi_bytes=fpi,
        checkpoints=records["checkpoints"],
        per_answer_byte_without_fpi=round((wal_bytes - fpi) / answer_bytes, 2),
        fpi_per_answer_byte=round(fpi / answer_bytes, 2),
        by_rmgr={
            name: {
                **e,
                "record_per_byte": round(e["record"] / answer_bytes, 2),
                "fpi_per_byte": round(e["fpi"] / answer_bytes, 2),
            }
            for name, e in records["by_rmgr"].items()
        },
        by_type=records["by_type"],
    )
    return out


def cpu_figures(run: ClientRun) -> dict[str, Any]:
    """Cores over the window and microseconds of CPU per event that arrived in it, per process
    tree."""
    cores = run.cores
    named = ("server", "postgres", "client")
    events = run.window_events
    per_event = {
        k: round(cores[k] * run.window_us / events, 2) for k in named if k in cores and events
    }
    if run.own_backends_cores is not None and events:
        per_event["postgres_own_backends"] = round(
            run.own_backends_cores * run.window_us / events, 2
        )
    nodes = {k: cores[k] for k in cores if k.startswith(NODE_PREFIX)}  # Citus's other nodes
    busy = sum(cores.get(k, 0.0) for k in named) + sum(nodes.values())
    return {
        "cores": {k: cores[k] for k in named if k in cores},
        **({"postgres_nodes_cores": nodes} if nodes else {}),
        "postgres_own_backends_cores": run.own_backends_cores,
        "machine_cores": cores.get("machine"),
        "other_cores": round(max(0.0, cores.get("machine", 0.0) - busy), 3),
        "irq_steal_cores": round(cores.get("irq", 0.0) + cores.get("steal", 0.0), 3),
        "others": cores.get("others", {}),
        "other_active_backends": run.other_active_backends,
        "workers_cores": run.workers,
        "us_per_event": per_event,
        "client_own_us_per_event": round(run.window_cpu_us / events, 3) if events else None,
        "client_life_cpu_s": round(run.cpu_us / 1e6, 3),
        "client_max_rss_kib": run.max_rss_kib,
    }


def failures(step: dict[str, Any]) -> int:
    """Answers that did not end well, as the client saw them or as their rows say (the larger)."""
    rows = int(sum(step["rows_not_success"].values())) + int(step["rows_missing"])
    return max(int(step["client_failed"]), rows)
