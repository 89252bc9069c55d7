"""Reading the model-pace results dictionary (``results["scenarios"]["model_pace"]``) for the
report and the targets: where things are, and how numbers are written."""

from __future__ import annotations

from typing import Any

R = dict[str, Any]
BUILD_LABELS = {"current": "this build", "baseline": "baseline"}
TARGET_N = 1000  # the steady step whose figures the targets read


def n_(value: Any, digits: int = 0) -> str:
    """A number for a table: thousands separated, ``digits`` decimals, a dash for none."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def pace_results(results: R) -> R:
    return (results.get("scenarios") or {}).get("model_pace") or {}


def databases_run(pace: R) -> list[tuple[str, R]]:
    """The databases the scenario ran on, the external (the targets' database) last."""
    dbs = pace.get("databases") or {}
    return [(k, dbs[k]) for k in ("embedded", "external") if k in dbs and "builds" in dbs[k]]


def current_builds(pace: R) -> list[tuple[str, R, R]]:
    """``(database key, database, this build's results)`` for each database where it ran."""
    return [
        (key, db, build)
        for key, db in databases_run(pace)
        if (build := (db.get("builds") or {}).get("current")) and "error" not in build
    ]


def target_step(build: R, n: int) -> tuple[R | None, R | None]:
    """The steady step and the burst at ``n`` answers, or else at the largest N with both."""
    steady = {s["n"]: s for s in build.get("sweep", [])}
    bursts = {s["n"]: s for s in build.get("bursts", [])}
    both = sorted(steady.keys() & bursts.keys())
    pick = n if n in both else (both[-1] if both else None)
    if pick is None:
        return None, None
    return steady[pick], bursts[pick]
