"""The model-pace part of the report: its section and its plot of pace and lag by N, from the
results dictionary (``results["scenarios"]["model_pace"]``). The lag over time is in
``bench.pace.lagreport``, the WAL in ``bench.pace.walreport``, the targets in
``bench.pace.targets``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.pace import costs, lagreport, walreport
from bench.pace.results import BUILD_LABELS, R, databases_run, pace_results
from bench.pace.results import n_ as _n

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
    out += lagreport.section(pace, images)
    out += walreport.section(pace)
    out += costs.client(pace)
    out += _invariants(pace)
    return out


def _intro(plan: R, pace: R) -> str:
    settings = pace.get("server_settings") or {}
    own = plan.get("deltas", 0) * plan.get("delta_ms", 0) / 1000
    measure = plan.get("measure_answers", 2)
    short = plan.get("short_deltas", 0)
    return (
        f"Each answer is the demo generator's: `DEMO_DELTAS={plan.get('deltas')}` deltas of "
        f"about {plan.get('delta_chars')} characters, `DEMO_DELTA_MS={plan.get('delta_ms')}` "
        f"apart ({1000 // max(1, plan.get('delta_ms', 1))} a second, {own:g} s of the "
        "generator's own time: *one answer duration*), quoting a prompt of prose-like random "
        "words (a fixed word list, seeded, a different prompt per answer, so the answers "
        "compress like text). Answer i goes to project i mod "
        f"{plan.get('projects')}, each of its own user. The server: "
        f"`WORKERS={settings.get('WORKERS')}`, `LEASE_SECONDS={settings.get('LEASE_SECONDS')}`, "
        "`GENERATOR=demo`, the per-user limits out of the way; each new server first streams "
        f"its first step's N answers for {plan.get('warmup_s', 0):g} s and cancels them (not "
        "measured). Every client reads its stream to the terminal event. For N = "
        f"{', '.join(f'{n:,}' for n in plan.get('counts', []))}, until the service saturates "
        f"(p99 pace above {plan.get('saturation_pace', 2):g}, or any answer not ending well), "
        "two steps on the same server, each after a `CHECKPOINT`:\n\n"
        "- **steady state** (the targets' figures): a closed loop of N slots. Slot i starts "
        f"its first answer at i/N of one answer duration, and each next answer as soon as the "
        "previous one ends, so that about N answers are open at any moment and they start at "
        "an even rate (N per answer duration), as in front of a model that keeps N "
        "conversations going. The first answer duration is a warm-up (the slots are still "
        f"joining); then the **measured window**, {measure:g} answer durations "
        f"({own * measure:g} s); no answer starts after it, and those open at its end run to "
        "their end unmeasured (the drain). Every answer of the step, warm-up and drain "
        "included, is checked and counted in *not success*.\n"
        "- **burst** (reported beside it, in no target): N answers started at once (over "
        f"{plan.get('ramp_s', 0):g} s), one each, from an idle server, as a restart or a "
        "thundering herd would; its figures over its first "
        f"{plan.get('burst_window_s', 0):g} s, where the start-up falls.\n\n"
        f"Then the long-answer pair, at {plan.get('long_count')} slots and a faster "
        f"`DEMO_DELTA_MS={plan.get('long_delta_ms')}`: one answer of "
        f"{plan.get('long_deltas', 0):,} deltas (about "
        f"{plan.get('long_deltas', 0) * plan.get('delta_chars', 0) / 1000:.1f} KB) per slot, "
        f"against answers of {short} deltas (about "
        f"{short * plan.get('delta_chars', 0) / 1000:.1f} KB) back to back per slot for as long "
        "(none started later than half a short answer before the long ones' own end): the same N "
        "open, the same delta rate, the same duration and about the same bytes on both sides, "
        "so that their WAL per answer byte differs by the answer's length alone.\n\n"
        f"Then, for this build, the reasoning pair: two steady steps of "
        f"{_n(plan.get('reasoning_count'))} answers of {plan.get('deltas', 0):,} pieces each at "
        "the same pace, one of answers that reason first (messages that start with `/think`: "
        "half the pieces `reasoning` events, whose text reads the message back, about as long as "
        "the answer; then the answer in the other half), one of text alone. A piece of "
        "reasoning counts as a delta in the lag, the first delta and the pace, and its bytes as "
        "answer bytes: the same N, pieces, pace and bytes on both sides, each on a fresh database "
        "of its own (on a used one, the side that came second reused the pages the first left "
        "with free space, a full-page image each), so that their figures differ by the "
        f"reasoning phase alone. {_n(plan.get('reasoning_rounds'))} round(s), the sides' order "
        "alternating; the ratios are of each side's median (a side's WAL per answer byte moves "
        "from run to run with how many events each flush batches).\n"
    )


def _definitions(plan: R) -> str:
    lead = plan.get("measure_answers", 2) - 1
    first = "answer duration" if lead == 1 else f"{lead:g} answer durations"
    return (
        "How each figure is taken. *The window*: in a steady step, the measured window above "
        "(seconds from the step's start, as the client's clock crossed them); in a burst, its "
        "first seconds; in the pair, the whole step.\n\n"
        "- *pace*: the answer's duration over the generator's own (`DEMO_DELTAS` x "
        "`DEMO_DELTA_MS`); the duration from the assistant message's row, `updated_at - "
        "created_at` (reservation to the final write), over the answers that succeeded; "
        "*client pace*: from the client's first event to its terminal event. Steady state: "
        "over the answers that started in the window early enough to end in it at the "
        f"generator's own pace (started in its first {first}), so that each ran its whole "
        "life under the full load; burst and pair: every answer.\n"
        "- *delivery lag*: the time the client holds delta i minus the time it was due on the "
        "generator's schedule, the client's time of the answer's first delta plus i x "
        "`DEMO_DELTA_MS` (so a generator slowed down by the service counts too), over every "
        "delta but the first **that arrived in the window**; in 0.1 ms buckets, each figure "
        "the bucket's upper edge. The client also keeps the lags that arrived before and after "
        "the window, and all of them by second of arrival (1 ms buckets).\n"
        "- *first delta*: from the client starting the request (its connect included) to the "
        "first `delta` event; the generator sleeps `DEMO_DELTA_MS` before it. Steady state: "
        "over the answers that started in the window; burst: all N.\n"
        "- *CPU per event*: cores of the process tree (the server: all its workers; "
        "PostgreSQL: the postmaster and all its children, the checkpointer and WAL writer "
        "included) over the window, per event that arrived in it; *this database's "
        "backends*: the backends connected to the scenario's database alone (other databases' "
        "sessions on a shared server left out).\n"
        "- *WAL per answer byte*: `pg_current_wal_insert_lsn()` at the window's end minus at "
        "its start, over the bytes of the deltas delivered in the window (each answer's "
        "`octet_length(content)` pro rata of its deltas that arrived there); the reservations, "
        "the user messages and the final content of the answers that ended in the window are "
        "in that WAL too. *Whole step*: from just after the `CHECKPOINT` to the last answer's "
        "end, over every answer's bytes. Split into records and full-page images below.\n"
        "- *not success*: answers that did not end `success`, by status and error code as "
        "their replayed terminal event says (healthy answers reaped show as `error/interrupted`)."
        "\n- *events/s*: events that arrived in the window over its length (offered: N x "
        "(deltas + 3) / the generator's own time); *open*: the answers open over the window, "
        "mean (least-most of every 100 ms).\n"
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
        w(f"#### {BUILD_LABELS.get(key, key)}: steady state, N answers open (the targets')\n")
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
        out += costs.cpu_table(build.get("sweep", []))
        if build.get("bursts"):
            w(f"#### {BUILD_LABELS.get(key, key)}: bursts, N answers started at once (no target)\n")
            out += _burst_table(build["bursts"], plan)
        thinking = build.get("reasoning") or {}
        if thinking.get("rounds"):
            w(f"#### {BUILD_LABELS.get(key, key)}: answers that reason first, beside text alone\n")
            rounds = thinking["rounds"]
            out += _steps_table(
                [r[side] for r in rounds for side in r["order"]],
                names=[
                    f"{'text alone' if side == 'text' else 'reasoning first'}, round {i}"
                    for i, r in enumerate(rounds, 1)
                    for side in r["order"]
                ],
            )
            per_round = ", ".join(_n(r.get("wal_ratio_thinking_to_text"), 3) for r in rounds)
            w(
                f"Reasoning first over text alone, the sides' medians over {len(rounds)} "
                f"round(s): WAL per answer byte {_n(thinking.get('wal_ratio_thinking_to_text'), 3)}"
                f" (round by round: {per_round}), pace p99 "
                f"{_n(thinking.get('pace_p99_ratio_thinking_to_text'), 3)} (the goal: within "
                "10% each).\n"
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


def _steps_table(steps: list[R], names: list[str] | None = None) -> list[str]:
    head = (
        "| N | window s (open) | pace p50 / p99 | client pace p99 | delivery lag p50 / p99 ms "
        "| first delta p50 / p99 ms | events/s (offered) | WAL B per answer byte (without FPI) "
        "| answers | not success | invariants |"
    )
    rows = [head, "|" + "---|" * 11]
    for i, s in enumerate(steps):
        win = s["window"]
        open_ = win["open_answers"]
        no_fpi = s["wal"]["window"].get("per_answer_byte_without_fpi")
        name = f"{names[i]}, {s['n']:,}" if names else f"{s['n']:,}"
        rows.append(
            f"| {name} | {win['start_s']:g}-{win['end_s']:g} ({_n(open_['mean'])}: "
            f"{_n(open_['min'])}-{_n(open_['max'])}) "
            f"| {_n(s['pace_rows']['p50'], 2)} / {_n(s['pace_rows']['p99'], 2)} "
            f"| {_n(s['pace_client']['p99'], 2)} "
            f"| {_n(s['lag']['p50_ms'], 1)} / {_n(s['lag']['p99_ms'], 1)} "
            f"| {_n(s['first_delta_ms']['p50'], 0)} / {_n(s['first_delta_ms']['p99'], 0)} "
            f"| {_n(s['events_per_s'])} ({_n(s['offered_events_per_s'])}) "
            f"| {_n(s['wal_per_answer_byte'], 1)} ({_n(no_fpi, 1)}) "
            f"| {s['answers']:,} | {_failures(s)} "
            f"| {'held' if s['invariants']['ok'] else '**BROKEN**'} |"
        )
    return [*rows, ""]


def _burst_table(steps: list[R], plan: R) -> list[str]:
    first = f"{plan.get('burst_window_s', 0):g}"
    rows = [
        f"| N | first delta p50 / p99 ms | delivery lag p50 / p99 ms, first {first} s "
        "| lag p99 ms, after | pace p50 / p99 (whole answers) | events/s, first "
        f"{first} s | cores server / postgres, first {first} s | not success | invariants |",
        "|" + "---|" * 9,
    ]
    for s in steps:
        cores = s["cpu"]["cores"]
        rows.append(
            f"| {s['n']:,} | {_n(s['first_delta_ms']['p50'], 0)} / "
            f"{_n(s['first_delta_ms']['p99'], 0)} "
            f"| {_n(s['lag']['p50_ms'], 1)} / {_n(s['lag']['p99_ms'], 1)} "
            f"| {_n(s['lag_phases']['after']['p99_ms'], 1)} "
            f"| {_n(s['pace_rows']['p50'], 2)} / {_n(s['pace_rows']['p99'], 2)} "
            f"| {_n(s['events_per_s'])} "
            f"| {_n(cores.get('server'), 2)} / {_n(cores.get('postgres'), 2)} "
            f"| {_failures(s)} | {'held' if s['invariants']['ok'] else '**BROKEN**'} |"
        )
    return [*rows, ""]


def _failures(step: R) -> str:
    parts = [f"{k} {v}" for k, v in step.get("reaped", {}).items()]
    parts += [f"client {k} {v}" for k, v in step.get("client_errors", {}).items()]
    parts += [f"refused {k} {v}" for k, v in step.get("refused_statuses", {}).items()]
    return ", ".join(parts) or "0"


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
    pairs = [(f"{n:,}, steady", a, b) for n, (a, b) in sorted(steps.items())]
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


def _invariants(pace: R) -> list[str]:
    steps = [
        (key, bkey, s)
        for key, db in databases_run(pace)
        for bkey, b in (db.get("builds") or {}).items()
        for s in [
            *b.get("sweep", []),
            *b.get("bursts", []),
            *(v for k, v in (b.get("long") or {}).items() if isinstance(v, dict)),
            *(
                r[side]
                for r in (b.get("reasoning") or {}).get("rounds", [])
                for side in ("text", "thinking")
            ),
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
        "per project, sequences exactly 1..2k (users odd, assistants even). Every answer "
        "sent is checked, those of the warm-up and the drain of a steady step included. "
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
