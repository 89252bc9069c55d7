"""The model-pace report's lag over time: what a burst's start-up costs against the steady state,
by phase of each step and by second of arrival."""

from __future__ import annotations

from bench.pace.results import R, current_builds, n_, target_step

_n = n_
TARGET_N = 1000


def section(pace: R, images: dict[str, str]) -> list[str]:
    builds = [(key, db, b) for key, db, b in current_builds(pace) if b.get("bursts")]
    if not builds:
        return []
    plan = pace.get("plan") or {}
    first = f"{plan.get('burst_window_s', 0):g}"
    out = [
        "### Steady state against a burst: the delivery lag over time\n",
        "The client keeps the lags apart by when the delta arrived: in a steady step before "
        "its window (the warm-up, slots still joining), in it, and after it (the drain); in a "
        f"burst in its first {first} s and after; and in both by second of arrival. A "
        "burst's tail shows as a peak in its first seconds that the steady state does not "
        "have.\n",
        "| database | N | steady: warm-up p99 | steady: window p50 / p99 | steady: drain p99 "
        f"| burst: first {first} s p50 / p99 | burst: after p99 "
        "| first delta p99, steady / burst |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _key, db, build in builds:
        bursts = {s["n"]: s for s in build["bursts"]}
        for s in build.get("sweep", []):
            b = bursts.get(s["n"])
            phases = s["lag_phases"]
            out.append(
                f"| {db.get('label', '?')} | {s['n']:,} | {_n(phases['before']['p99_ms'], 1)} "
                f"| {_n(s['lag']['p50_ms'], 1)} / {_n(s['lag']['p99_ms'], 1)} "
                f"| {_n(phases['after']['p99_ms'], 1)} "
                + (
                    f"| {_n(b['lag']['p50_ms'], 1)} / {_n(b['lag']['p99_ms'], 1)} "
                    f"| {_n(b['lag_phases']['after']['p99_ms'], 1)} "
                    f"| {_n(s['first_delta_ms']['p99'])} / {_n(b['first_delta_ms']['p99'])} |"
                    if b
                    else f"| — | — | {_n(s['first_delta_ms']['p99'])} / — |"
                )
            )
    out.append("")
    if "model_pace_lag" in images:
        out.append(f"![delivery lag over time]({images['model_pace_lag']})\n")
    out += _by_second(*builds[-1][1:])
    return out


def _by_second(db: R, build: R) -> list[str]:
    steady, burst = target_step(build, TARGET_N)
    if steady is None or burst is None:
        return []
    s_rows = {r[0]: r for r in steady.get("lag_by_second") or []}
    b_rows = {r[0]: r for r in burst.get("lag_by_second") or []}
    win = steady["window"]
    out = [
        f"By second of arrival at {steady['n']:,} answers, {db.get('label', '?')} (1 ms "
        f"buckets; the steady step's window is seconds {win['start_s']:g} to "
        f"{win['end_s']:g}):\n",
        "| second | burst: deltas | burst: lag p50 / p99 ms | steady: deltas "
        "| steady: lag p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for t in sorted(s_rows.keys() | b_rows.keys()):
        b, s = b_rows.get(t), s_rows.get(t)
        out.append(
            f"| {t} | {_n(b[1]) if b else '—'} | {_cell(b)} | {_n(s[1]) if s else '—'} "
            f"| {_cell(s)} |"
        )
    return [*out, ""]


def _cell(row: list[float | int | None] | None) -> str:
    return f"{_n(row[2])} / {_n(row[3])}" if row else "—"
