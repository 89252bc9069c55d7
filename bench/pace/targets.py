"""The model-pace targets (issue 11, item 2), judged from the results dictionary: on the
external PostgreSQL (durable, the issue's setting) when the scenario ran there, else on the
embedded one (said in each target's name). The 1,000-answer targets take the steady step's
window (each entry's ``source`` says which figure); the bursts feed none of them, and
``burst_note`` puts their figures beside the table."""

from __future__ import annotations

from collections.abc import Callable

from bench.pace.results import TARGET_N, R, databases_run, n_, pace_results


def targets(results: R) -> list[R]:
    ran = databases_run(pace_results(results))
    if not ran:
        return []
    key, db = ran[-1]
    build = (db.get("builds") or {}).get("current") or {}
    where = "" if key == "external" else " (embedded PostgreSQL, not durable)"
    plan = pace_results(results).get("plan") or {}
    step = next((s for s in build.get("sweep", []) if s["n"] == TARGET_N), None)
    missing = _why_missing(build, plan)
    at = f"{TARGET_N:,} answers open, steady state"
    step_name = f"the steady step of {TARGET_N:,}"
    window = _window(step)
    out = [
        _entry(
            f"model pace, {at}: p99 pace{where}",
            "≤ 1.1",
            1.1,
            "ratio",
            step and step["pace_rows"]["p99"],
            lambda v: f"{v:.2f}",
            missing,
            f"{step_name}: answers started early enough in its window{window} to end in it",
        ),
        _entry(
            f"model pace, {at}: delivery lag p99{where}",
            "< 100 ms",
            100.0,
            "ms",
            step and step["lag"]["p99_ms"],
            lambda v: f"{v:.0f} ms",
            missing,
            f"{step_name}: deltas that arrived in its window{window}",
        ),
        _entry(
            f"model pace, {at}: first delta p99{where}",
            "< 150 ms",
            150.0,
            "ms",
            step and step["first_delta_ms"]["p99"],
            lambda v: f"{v:.0f} ms",
            missing,
            f"{step_name}: answers started in its window{window}",
        ),
        _entry(
            f"model pace, {at}: healthy answers reaped, LEASE_SECONDS=3{where}",
            "= 0",
            0.0,
            "answers",
            step and sum(step["reaped"].values()),
            lambda v: f"{v:.0f}",
            missing,
            f"{step_name}: every answer of the step (warm-up and drain included)",
        ),
    ]
    pair = build.get("long") or {}
    steps = [*build.get("sweep", []), *(pair.get(k) for k in ("short", "long"))]
    wal = [s["wal_per_answer_byte"] for s in steps if s and s.get("wal_per_answer_byte")]
    out.append(
        _entry(
            f"model pace: WAL bytes per answer byte, worst step{where}",
            "≤ 30",
            30.0,
            "bytes",
            max(wal) if wal else None,
            lambda v: f"{v:.0f}",
            "not measured",
            "the steady steps' windows and the pair's whole steps, FPI included",
        )
    )
    out.append(
        _entry(
            f"model pace: WAL per answer byte, 16 KB answers over 2 KB ones{where}",
            "within 25%",
            0.25,
            "ratio",
            pair.get("wal_ratio_long_to_short"),
            lambda v: f"{v:.2f}",
            "not measured",
            "the long-answer pair: whole steps at the same N, delta rate and duration",
        )
    )
    thinking = build.get("reasoning") or {}
    source = "the reasoning pair: steady steps at the same N, pieces, pace and bytes per answer"
    out.append(
        _entry(
            f"model pace: WAL per answer byte, answers that reason first over text alone{where}",
            "within 10%",
            0.10,
            "ratio",
            thinking.get("wal_ratio_thinking_to_text"),
            lambda v: f"{v:.2f}",
            "not measured",
            source,
            subject="the answers that reason first",
        )
    )
    out.append(
        _entry(
            f"model pace: p99 pace, answers that reason first over text alone{where}",
            "within 10%",
            0.10,
            "ratio",
            thinking.get("pace_p99_ratio_thinking_to_text"),
            lambda v: f"{v:.2f}",
            "not measured",
            source,
            subject="the answers that reason first",
            per="",
        )
    )
    return out


def _window(step: R | None) -> str:
    if not step:
        return ""
    return f" ({step['window']['start_s']:g}-{step['window']['end_s']:g} s)"


def burst_note(results: R) -> str:
    """The burst at the targets' N, beside the targets (in none of them)."""
    ran = databases_run(pace_results(results))
    if not ran:
        return ""
    build = (ran[-1][1].get("builds") or {}).get("current") or {}
    plan = pace_results(results).get("plan") or {}
    burst = next((s for s in build.get("bursts", []) if s["n"] == TARGET_N), None)
    if burst is None:
        return ""
    return (
        f"Not a target, beside them: a burst of {TARGET_N:,} answers started at once "
        f"(over {plan.get('ramp_s', 0):g} s) on the same database: first delta p50 / p99 "
        f"{n_(burst['first_delta_ms']['p50'])} / {n_(burst['first_delta_ms']['p99'])} ms, "
        f"delivery lag p99 {n_(burst['lag']['p99_ms'])} ms over its first "
        f"{plan.get('burst_window_s', 0):g} s and "
        f"{n_(burst['lag_phases']['after']['p99_ms'])} ms after them, "
        f"{sum(burst['reaped'].values())} answer(s) reaped (see the model-pace section)."
    )


def _why_missing(build: R, plan: R) -> str:
    if "error" in build:
        return "missed: the run failed"
    if TARGET_N not in (plan.get("counts") or []):
        return f"not in this plan (no {TARGET_N:,} step)"
    stopped = build.get("stopped")
    if stopped:
        return f"missed: the steps stopped at {stopped['n']:,} answers ({stopped['why']})"
    return "not measured"


def _entry(
    name: str,
    target: str,
    limit: float,
    unit: str,
    measured: float | None,
    fmt: Callable[[float], str],
    missing: str,
    source: str,
    *,
    subject: str = "the long answers",
    per: str = " per byte",
) -> R:
    entry: R = {"name": name, "target": target, "limit": limit, "unit": unit, "source": source}
    if measured is None:
        met = False if missing.startswith("missed") else None
        return {
            **entry,
            "measured": None,
            "measured_text": "not measured",
            "met": met,
            "verdict": missing if met is False else f"— ({missing})",
        }
    value = float(measured)
    if target.startswith("within"):
        met = abs(value - 1) <= limit
    elif target.startswith("<"):
        met = value < limit
    else:
        met = value <= limit
    verdict = "met" if met else _missed(target, value, limit, subject, per)
    return {**entry, "measured": value, "measured_text": fmt(value), "met": met, "verdict": verdict}


def _missed(target: str, value: float, limit: float, subject: str, per: str) -> str:
    if target.startswith("within"):
        side = "dearer" if value > 1 else "cheaper"
        return f"missed: {subject} {abs(value - 1) * 100:.0f}% {side}{per}"
    if limit == 0:
        return f"missed: {value:.0f}"
    return f"missed: {value / limit:.2f} times the limit"
