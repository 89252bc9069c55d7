"""The model-pace report's lag over time: what a burst's start-up costs against the steady state,
by phase of each step and by second of arrival."""

from __future__ import annotations

from bench.pace.results import TARGET_N, R, current_builds, target_step
from bench.pace.results import n_ as _n


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
        f"burst in its first {first} s and after; and in both by second of arrival. Were the "
        "lag a burst's start-up, it would show in the burst's first seconds and not in the "
        "steady window; were it the load of N answers open, the steady step's lag would rise "
        "during its warm-up as the slots join (at the full start rate from the first second) "
        "and stay up through its window.\n",
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
    out += _server_side(builds)
    return out


def _server_side(builds: list[tuple[str, R, R]]) -> list[str]:
    """The server's own account over each window (its ``/metrics``): a delta reaches its
    listener only once the flusher has written it, and an answer starts only once its
    reservation has had a pool connection."""
    out = [
        "Where the time goes, by the server's own `/metrics` over each window (histograms read "
        "at the window's edges, so p50 and p99 are the upper bounds of the server's buckets: "
        "1, 2.5, 5, 10, 25, 50, 100, 250, 500 ms, 1 s...; gauges sampled every second). *First "
        "event*: the client's, from connecting to the `start` event (the reservation's path); "
        "*first delta* adds the generator's first sleep and the first flush.\n",
        "| database | step | first event p50 / p99 ms (client) | first delta p99 ms | flush "
        "statement p50 / p99 ms (≤) | flushes/s | messages per flush | events written/s "
        "| pool: in use / waiting, mean (max) | heartbeat p99 ms (≤) | event loop lag p50 / "
        "p99 ms (≤) | GC pauses: count, p99 ms (≤) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _key, db, build in builds:
        for s in [*build.get("sweep", []), *build.get("bursts", [])]:
            m = s.get("server_metrics") or {}
            if "error" in m or not m:
                continue
            first = s.get("first_event_ms") or {}
            out.append(
                f"| {db.get('label', '?')} | {s['kind']} {s['n']:,} "
                f"| {_n(first.get('p50'))} / {_n(first.get('p99'))} "
                f"| {_n(s['first_delta_ms']['p99'])} "
                f"| {_ms(m['flush_s']['p50_le'])} / {_ms(m['flush_s']['p99_le'])} "
                f"| {_n(m['flushes_per_s'])} | {_n(m['flush_messages']['mean'], 1)} "
                f"| {_n(m['events_flushed_per_s'])} "
                f"| {_gauge(m['pool_in_use'])} / {_gauge(m['pool_waiting'])} "
                f"| {_ms(m['heartbeat_s']['p99_le'])} "
                f"| {_ms(_le(m, 'loop_lag_s', 'p50_le'))} / {_ms(_le(m, 'loop_lag_s', 'p99_le'))} "
                f"| {_n(m.get('gc_pause_s', {}).get('count'))}, "
                f"{_ms(_le(m, 'gc_pause_s', 'p99_le'))} |"
            )
    return [*out, ""] if len(out) > 3 else []


def _le(m: R, key: str, q: str) -> float | None:
    """A histogram's bound, or None from a build without that histogram."""
    found: float | None = (m.get(key) or {}).get(q)
    return found


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:g}"


def _gauge(g: R) -> str:
    return f"{_n(g.get('mean'), 1)} ({_n(g.get('max'))})"


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
