"""The model-pace part of the report: its section and its plot, from the results dictionary
(``results["scenarios"]["model_pace"]``); its targets are in ``bench.pace.targets``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

R = dict[str, Any]
BUILD_LABELS = {"current": "this build", "baseline": "baseline"}


def _n(value: Any, digits: int = 0) -> str:
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


# The section


def section(results: R, images: dict[str, str]) -> list[str]:
    pace = pace_results(results)
    if not pace:
        return []
    out: list[str] = []
    w = out.append
    plan = pace.get("plan") or {}
    w("## Streaming at a model's pace (9)\n")
    w(_intro(plan, pace))
    w(_definitions(plan))
    w(_drift(pace))
    for key, why in (
        (k, v["skipped"]) for k, v in (pace.get("databases") or {}).items() if "skipped" in v
    ):
        w(f"The {key} PostgreSQL was left out of this run: {why}.\n")
    builds = pace.get("builds") or {}
    if "baseline" in builds:
        b = builds["baseline"]
        w(
            f"*Baseline*: the server code of `{b.get('revision')}` (commit "
            f"`{(b.get('commit') or '?')[:10]}`, “{b.get('subject') or '?'}”), run the same way "
            "on a database migrated by its own migrations.\n"
        )
    for _key, db in databases_run(pace):
        out += _database(db, plan)
    if "model_pace" in images:
        w(f"![model pace]({images['model_pace']})\n")
    out += _client(pace)
    out += _invariants(pace)
    return out


def _intro(plan: R, pace: R) -> str:
    settings = pace.get("server_settings") or {}
    own = plan.get("deltas", 0) * plan.get("delta_ms", 0) / 1000
    return (
        f"N answers at once (started over {plan.get('ramp_s', 0):g} s), N = "
        f"{', '.join(f'{n:,}' for n in plan.get('counts', []))} until the service saturates "
        f"(p99 pace above {plan.get('saturation_pace', 2):g}, or any answer not ending well). "
        f"Each answer is the demo generator's: `DEMO_DELTAS={plan.get('deltas')}` deltas of "
        f"about {plan.get('delta_chars')} characters, `DEMO_DELTA_MS={plan.get('delta_ms')}` "
        f"apart ({1000 // max(1, plan.get('delta_ms', 1))} a second, {own:g} s of the "
        "generator's own time), quoting a prompt of prose-like random words (a fixed word "
        "list, seeded, a different prompt per answer, so the answers compress like text). "
        f"Answer i goes to project i mod {plan.get('projects')}, each of its own user. The "
        f"server: `WORKERS={settings.get('WORKERS')}`, "
        f"`LEASE_SECONDS={settings.get('LEASE_SECONDS')}`, `GENERATOR=demo`, the per-user "
        "limits out of the way; each new server first streams its first step's N answers for "
        f"{plan.get('warmup_s', 0):g} s and cancels them (a warm-up, not measured). Every "
        "client reads its stream to the terminal event. Then the "
        f"long-answer pair at {plan.get('long_count')} answers and a faster "
        f"`DEMO_DELTA_MS={plan.get('long_delta_ms')}`: {plan.get('long_deltas'):,} deltas "
        f"(about {plan.get('long_deltas', 0) * plan.get('delta_chars', 0) / 1000:.1f} KB) and "
        f"{plan.get('short_deltas')} deltas (about "
        f"{plan.get('short_deltas', 0) * plan.get('delta_chars', 0) / 1000:.1f} KB) at the same "
        "pace, so that their WAL per answer byte differs by the answer's length alone.\n"
    )


def _definitions(plan: R) -> str:
    return (
        "How each figure is taken:\n\n"
        "- *pace*: the answer's duration over the generator's own (`DEMO_DELTAS` x "
        "`DEMO_DELTA_MS`); the duration from the assistant message's row, `updated_at - "
        "created_at` (reservation to the final write), over the answers that succeeded; "
        "*client pace*: from the client's first event to its terminal event.\n"
        "- *delivery lag*: the time the client holds delta i minus the time it was due on the "
        "generator's schedule, the client's time of the answer's first delta plus i x "
        "`DEMO_DELTA_MS` (so a generator slowed down by the service counts too), over every "
        "delta but the first; in 0.1 ms buckets, each figure the bucket's upper edge.\n"
        "- *first delta*: from the client starting the request (its connect included) to the "
        "first `delta` event; the generator sleeps `DEMO_DELTA_MS` before it.\n"
        "- *CPU per event*: cores of the process tree (the server: all its workers; "
        "PostgreSQL: the postmaster and all its children, the checkpointer and WAL writer "
        "included) over the client's window (first connect to last terminal event), per event "
        "delivered; *this database's backends*: the backends connected to the scenario's "
        "database alone (other databases' sessions on a shared server left out).\n"
        "- *WAL per answer byte*: `pg_current_wal_insert_lsn()` after the step minus before it "
        "(a `CHECKPOINT` just before, so each step pays its full-page images alike where "
        "`full_page_writes` is on), over the sum of `octet_length(content)` of the step's "
        "answers; the user messages' own writes are in the WAL too.\n"
        "- *not success*: answers that did not end `success`, by status and error code as "
        "their replayed terminal event says (healthy answers reaped show as `error/interrupted`)."
        "\n- *events/s*: events the clients received over the window (offered: N x (deltas + "
        "3) / the generator's own time).\n"
    )


def _drift(pace: R) -> str:
    drifts = pace.get("generator_drift") or {}
    parts = [
        f"{BUILD_LABELS.get(k, k)}: pace {d['pace']:.3f}, {d['drift_ms']:,.0f} ms late after "
        f"{d['deltas']:,} deltas"
        for k, d in drifts.items()
        if "pace" in d
    ]
    if not parts:
        return ""
    return (
        "The demo generator alone (one answer, no server, on uvloop like the workers): "
        + "; ".join(parts)
        + ". It sleeps `DEMO_DELTA_MS` between deltas, so each sleep's overshoot adds up; the "
        "delivery lag counts that drift by its definition, so it is a floor under the lag of "
        "every step below, whatever the service does.\n"
    )


def _database(db: R, plan: R) -> list[str]:
    out: list[str] = []
    w = out.append
    s = db.get("settings") or {}
    w(f"### {db.get('label', '?')}: PostgreSQL {db.get('version', '?')}\n")
    w(", ".join(f"`{k}={v}`" for k, v in s.items()) + ".\n")
    builds = db.get("builds") or {}
    for key, build in builds.items():
        w(f"#### {BUILD_LABELS.get(key, key)}: steps of N answers\n")
        if "error" in build:
            w(f"This run failed: `{build['error'].splitlines()[0]}`.\n")
            continue
        out += _steps_table(build.get("sweep", []))
        stopped = build.get("stopped")
        cap = build.get("capacity")
        w(
            f"Capacity (largest N with p99 pace ≤ 1.1, every answer ending well): **"
            f"{_n(cap) if cap else 'none of the steps'}**."
            + (f" The steps stopped at {stopped['n']:,}: {stopped['why']}." if stopped else "")
            + "\n"
        )
        out += _cpu_table(build.get("sweep", []))
        long = build.get("long") or {}
        if long.get("long"):
            w("Long answers against short ones, at the same pace and N:\n")
            out += _steps_table([long["short"], long["long"]], label=True)
            ratio = long.get("wal_ratio_long_to_short")
            w(
                f"WAL per answer byte, long over short: **{_n(ratio, 2)}** (a write cost per "
                "event that does not grow with the answer gives 1.0).\n"
            )
        prof = build.get("profiled")
        if prof:
            w(
                f"Under py-spy (the profile below), {prof['n']:,} answers ran at a p99 pace of "
                f"{_n(prof['pace_rows']['p99'], 2)}.\n"
            )
    if {"current", "baseline"} <= builds.keys() and not any("error" in b for b in builds.values()):
        out += _side_by_side(builds["current"], builds["baseline"])
    return out


def _steps_table(steps: list[R], *, label: bool = False) -> list[str]:
    head = (
        "| N | answer | pace p50 / p99 | client pace p99 | delivery lag p50 / p99 ms "
        "| first delta p50 / p99 ms | events/s (offered) | WAL B per answer byte "
        "| not success | invariants |"
    )
    rows = [head, "|" + "---|" * 10]
    for s in steps:
        answer = f"{_n(s['mean_answer_bytes'])} B, {s['deltas']:,} x {s['delta_ms']} ms"
        rows.append(
            f"| {s['n']:,} | {answer} "
            f"| {_n(s['pace_rows']['p50'], 2)} / {_n(s['pace_rows']['p99'], 2)} "
            f"| {_n(s['pace_client']['p99'], 2)} "
            f"| {_n(s['lag']['p50_ms'], 1)} / {_n(s['lag']['p99_ms'], 1)} "
            f"| {_n(s['first_delta_ms']['p50'], 0)} / {_n(s['first_delta_ms']['p99'], 0)} "
            f"| {_n(s['events_per_s'])} ({_n(s['offered_events_per_s'])}) "
            f"| {_n(s['wal_per_answer_byte'], 0)} | {_failures(s)} "
            f"| {'held' if s['invariants']['ok'] else '**BROKEN**'} |"
        )
    return [*rows, ""]


def _failures(step: R) -> str:
    parts = [f"{k} {v}" for k, v in step.get("reaped", {}).items()]
    parts += [f"client {k} {v}" for k, v in step.get("client_errors", {}).items()]
    return ", ".join(parts) or "0"


def _cpu_table(steps: list[R]) -> list[str]:
    rows = [
        "| N | cores: server / postgres (this database's backends) / client / other "
        "| µs per event: server / postgres (this database's backends) / client | per worker "
        "| busy sessions of other databases |",
        "|---|---|---|---|---|",
    ]
    for s in steps:
        c = s["cpu"]
        cores, per = c["cores"], c["us_per_event"]
        workers = ", ".join(f"{v:.2f}" for v in (c.get("workers_cores") or {}).values())
        rows.append(
            f"| {s['n']:,} | {_n(cores.get('server'), 2)} / {_n(cores.get('postgres'), 2)} "
            f"({_n(c.get('postgres_own_backends_cores'), 2)}) / {_n(cores.get('client'), 3)} "
            f"/ {_n(c.get('other_cores'), 2)} "
            f"| {_n(per.get('server'), 1)} / {_n(per.get('postgres'), 1)} "
            f"({_n(per.get('postgres_own_backends'), 1)}) "
            f"/ {_n(c.get('client_own_us_per_event'), 2)} "
            f"| {workers or '—'} | {_n(c.get('other_active_backends'))} |"
        )
    return [*rows, ""]


def _side_by_side(current: R, baseline: R) -> list[str]:
    rows = [
        "#### Side by side: this build and the baseline\n",
        "| N | pace p99: this / baseline | delivery lag p99 ms: this / baseline "
        "| first delta p99 ms: this / baseline | WAL B per answer byte: this / baseline "
        "| server µs per event: this / baseline | not success: this / baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    steps = {s["n"]: [s, None] for s in current.get("sweep", [])}
    for s in baseline.get("sweep", []):
        steps.setdefault(s["n"], [None, None])[1] = s
    long_c, long_b = current.get("long") or {}, baseline.get("long") or {}
    pairs = [(f"{n:,}", a, b) for n, (a, b) in sorted(steps.items())]
    pairs += [
        (f"{k} answers, {long_c.get(k, {}).get('n', '?')}", long_c.get(k), long_b.get(k))
        for k in ("short", "long")
    ]

    def both(a: R | None, b: R | None, get: Callable[[R], Any], digits: int) -> str:
        return " / ".join(_n(get(x), digits) if x else "not run" for x in (a, b))

    for name, a, b in pairs:
        rows.append(
            f"| {name} | {both(a, b, lambda s: s['pace_rows']['p99'], 2)} "
            f"| {both(a, b, lambda s: s['lag']['p99_ms'], 0)} "
            f"| {both(a, b, lambda s: s['first_delta_ms']['p99'], 0)} "
            f"| {both(a, b, lambda s: s['wal_per_answer_byte'], 0)} "
            f"| {both(a, b, lambda s: s['cpu']['us_per_event'].get('server'), 1)} "
            f"| {both(a, b, lambda s: s['failures'], 0)} |"
        )
    rows.append(
        f"\nCapacity: this build {_n(current.get('capacity'))}, baseline "
        f"{_n(baseline.get('capacity'))}.\n"
    )
    return rows


def _client(pace: R) -> list[str]:
    client = pace.get("client") or {}
    out = ["### The client and what it cost\n"]
    kind = {"c": "a C program", "python": "the Python client"}.get(client.get("kind", ""), "?")
    text = (
        f"The load came from {kind} ({client.get('note', '')}): one process, non-blocking "
        "sockets on epoll, one connection per answer; it parses the HTTP head, the chunked "
        "body and each SSE frame's `id:` and `event:` lines, never the JSON, and takes the "
        "clock once per read (the C client pauses 1 ms after each wake-up with work, so that "
        "one wake-up reads many streams: every arrival is timed at most that late). Its own "
        "CPU per event delivered (µs, by N):"
    )
    busiest: R | None = None
    for key, db in databases_run(pace):
        sweep = ((db.get("builds") or {}).get("current") or {}).get("sweep", [])
        measured = [s for s in sweep if s["cpu"].get("client_own_us_per_event") is not None]
        by_step = ", ".join(
            f"{s['n']:,}: {s['cpu']['client_own_us_per_event']:.2f}" for s in measured
        )
        text += f" {key}, {by_step};" if by_step else ""
        for s in measured:
            if busiest is None or s["events_per_s"] > busiest["events_per_s"]:
                busiest = s
    if busiest is not None:
        cores = busiest["cpu"]["client_own_us_per_event"] * busiest["events_per_s"] / 1e6
        text += (
            f" at the busiest step ({busiest['events_per_s']:,} events/s) it took {cores:.3f} "
            "of a core."
        )
    compared = [
        (b["sweep"][0], b["python_client"])
        for _k, db in databases_run(pace)
        for b in (db.get("builds") or {}).values()
        if b.get("python_client") and b.get("sweep")
    ]
    if compared:
        c, py = compared[0]
        c_us = c["cpu"].get("client_own_us_per_event")
        py_us = py["cpu"].get("client_own_us_per_event")
        text += (
            f" The same step of {c['n']:,} answers with the Python client "
            f"(`bench/pace/client.py`, an asyncio protocol on uvloop): {_n(py_us, 2)} µs per "
            f"event against {_n(c_us, 2)}"
            + (
                f"; at that cost, 40,000 events/s would take {py_us * 0.04:.2f} of a core from "
                "the two that the server and PostgreSQL share."
                if py_us
                else "."
            )
        )
    return [*out, text + "\n"]


def _invariants(pace: R) -> list[str]:
    steps = [
        (key, bkey, s)
        for key, db in databases_run(pace)
        for bkey, b in (db.get("builds") or {}).items()
        for s in [
            *b.get("sweep", []),
            *(v for k, v in (b.get("long") or {}).items() if isinstance(v, dict)),
            *(b[k] for k in ("python_client", "profiled") if b.get(k)),
        ]
    ]
    broken = [(k, b, s) for k, b, s in steps if not s["invariants"]["ok"]]
    answers = sum(s["invariants"]["answers"]["answers"] for _k, _b, s in steps)
    text = (
        "### Invariants\n\nChecked after every step, through the API: each answer's events "
        "replayed from `Last-Event-ID: 0` (`GET /api/projects/{p}/messages/{m}/events`), ids "
        "1..n without gaps and one terminal event, last; the joined `delta` texts equal to the "
        "terminal event's content and to the message row's; every assistant message terminal; "
        "per project, sequences exactly 1..2k (users odd, assistants even). "
        f"{answers:,} answers in {len(steps)} steps: "
    )
    if not broken:
        return [text + "**all held**.\n"]
    lines = [text + f"**{len(broken)} step(s) broke one**:\n"]
    for key, bkey, s in broken:
        inv = s["invariants"]
        lines.append(
            f"- {key}, {bkey}, {s['tag']}: answers {inv['answers']['problems']} "
            f"(e.g. {'; '.join(inv['answers']['examples'][:2])}); sequences ok: "
            f"{inv['sequences']['ok']}, unfinished: {inv['sequences']['unfinished']}"
        )
    return [*lines, ""]


# The plot


def plot(results: R, directory: Path, plt: Any) -> str | None:
    series = [
        (f"{db.get('label', key)}, {BUILD_LABELS.get(bkey, bkey)}", b.get("sweep", []))
        for key, db in databases_run(pace_results(results))
        for bkey, b in (db.get("builds") or {}).items()
    ]
    series = [(name, steps) for name, steps in series if steps]
    if not series:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, steps in series:
        xs = [s["n"] for s in steps]
        left.plot(xs, [s["pace_rows"]["p99"] for s in steps], "-o", label=name)
        right.plot(xs, [s["lag"]["p99_ms"] for s in steps], "-o", label=name)
    left.axhline(1.1, color="tab:red", ls="--", lw=1, label="target 1.1")
    right.axhline(100, color="tab:red", ls="--", lw=1, label="target 100 ms")
    for ax, label in (
        (left, "p99 pace (duration / the generator's own)"),
        (right, "delivery lag p99, ms"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent answers")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Streaming at a model's pace ({results['machine']['date'][:10]})", fontsize=10)
    fig.tight_layout()
    path = directory / "bench-model-pace.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return str(path)
