"""The Citus step's part of docs/benchmarks.md, and its targets (issue 19, item 4): at 1,000
answers on the three-node cluster, p99 pace ≤ 1.1 and delivery lag p99 < 150 ms; every request
statement on one node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.pace.results import TARGET_N, R, n_
from bench.pace.targets import _entry

SIDES = (("single", "one PostgreSQL"), ("citus", "Citus"))
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")
WHERE = f"the Citus step's steady step of {TARGET_N:,}"


def citus_results(results: R) -> R:
    return (results.get("scenarios") or {}).get("citus") or {}


def _step(results: R, side: str) -> R | None:
    entry = (citus_results(results).get("sides") or {}).get(side) or {}
    step = entry.get("step")
    return step if isinstance(step, dict) else None


def targets(results: R) -> list[R]:
    c = citus_results(results)
    if not c and "citus" not in (results.get("scenarios_run") or []):
        return []
    missing = _missing(results)
    step = _step(results, "citus") if not missing else None
    at = f"Citus, {TARGET_N:,} answers open, steady state"
    checks: list[tuple[str, str, float, str, Any, Callable[[float], str], str]] = [
        (
            f"{at}: p99 pace",
            "≤ 1.1",
            1.1,
            "ratio",
            step and step["pace_rows"]["p99"],
            lambda v: f"{v:.2f}",
            f"{WHERE}: answers started early enough in its window to end in it",
        ),
        (
            f"{at}: delivery lag p99",
            "< 150 ms",
            150.0,
            "ms",
            step and step["lag"]["p99_ms"],
            lambda v: f"{v:.0f} ms",
            f"{WHERE}: deltas that arrived in its window",
        ),
    ]
    out = [
        _entry(name, target, limit, unit, value, fmt, missing or "not measured", source)
        for name, target, limit, unit, value, fmt, source in checks
    ]
    check = c.get("one_node") or {}
    entry: R = {
        "name": "Citus: every statement that serves a request reaches one node",
        "target": "all",
        "limit": 1.0,
        "unit": "pass",
        "source": f"EXPLAIN on the cluster: `{check.get('test', 'not run')}`",
    }
    passed = check.get("passed")
    if passed is None:
        why = f"skipped: {c['skipped']}" if c.get("skipped") else "not checked"
        entry.update(measured=None, measured_text="not checked", met=None, verdict=f"— ({why})")
    else:
        entry.update(
            measured=1.0 if passed else 0.0,
            measured_text="all" if passed else "not all (the test failed)",
            met=bool(passed),
            verdict="met" if passed else "missed",
        )
    return [*out, entry, _one_owner_target(c)]


OTHER_NODE_LIMIT = 0.5  # commits per generation on a worker that holds none of the owner's shards


def _one_owner_target(c: R) -> R:
    one = ((c.get("sides") or {}).get("citus") or {}).get("one_owner") or {}
    value = one.get("other_nodes_commits_per_generation")
    why = f"skipped: {c['skipped']}" if c.get("skipped") else "not measured"
    return _entry(
        "Citus: a generation's statements commit on the owner's worker node only",
        "< 0.5",
        OTHER_NODE_LIMIT,
        "commits",
        value,
        lambda v: f"{v:.2f} commits per generation on another worker",
        why,
        "pgbench with one client on one owner: transactions committed on each other worker "
        "node (`pg_stat_database`) per generation",
    )


def _missing(results: R) -> str:
    """Why the 1,000-answer figures are not there (empty when they are)."""
    c = citus_results(results)
    if c.get("skipped"):
        return f"skipped: {c['skipped']}"
    if c.get("answers") != TARGET_N:
        return f"not at {TARGET_N:,} answers in this run ({n_(c.get('answers'))})"
    side = (c.get("sides") or {}).get("citus") or {}
    if "error" in side:
        return f"missed: the step failed ({str(side['error']).splitlines()[0][:160]})"
    return ""


def section(results: R) -> list[str]:
    c = citus_results(results)
    if not c:
        return []
    out = ["## On Citus: the same answers on a three-node cluster\n"]
    if c.get("skipped"):
        return [*out, f"Skipped in this run: {c['skipped']}.\n"]
    cluster = c.get("cluster") or {}
    sides = c.get("sides") or {}
    n = c.get("answers")
    out.append(
        f"One steady model-pace step of {n_(n)} answers open at once (the model-pace "
        "scenario's shape, client and server settings: 400 deltas of 5 characters at 40 a "
        "second, measured over a window after one answer's warm-up) on one PostgreSQL and on "
        f"a Citus cluster ({cluster.get('origin', '?')}: coordinator "
        f"{cluster.get('coordinator', '?')}, workers {', '.join(cluster.get('workers', []))}), "
        "one after the other, each on a fresh database migrated by `python -m server "
        "migrate` (on Citus: the distributed layout, docs/scaling.md). Both sides durable: "
        + _durability(sides)
        + ". The WAL on Citus is summed over every node (each node's insert position before "
        "and after the window); its PostgreSQL CPU is the coordinator's and the worker "
        "nodes' (`bench/citus`).\n"
    )
    out.append("| figure | " + " | ".join(_label(sides, k, name) for k, name in SIDES) + " |")
    out.append("|---|" + "---|" * len(SIDES))
    rows: list[tuple[str, Callable[[R], str]]] = [
        (
            "pace p50 / p99",
            lambda s: f"{n_(s['pace_rows']['p50'], 2)} / {n_(s['pace_rows']['p99'], 2)}",
        ),
        ("delivery lag p99 ms", lambda s: n_(s["lag"]["p99_ms"])),
        ("first delta p99 ms", lambda s: n_(s["first_delta_ms"]["p99"])),
        ("WAL per answer byte (every node)", lambda s: n_(s["wal_per_answer_byte"], 1)),
        ("events/s", lambda s: n_(s["events_per_s"])),
        ("cores: server / postgres (coordinator or only node) / worker nodes", _cores),
        (
            "answers not ended well / invariants",
            lambda s: f"{s['failures']} / " + ("held" if s["invariants"]["ok"] else "BROKEN"),
        ),
    ]
    for i, (name, fmt) in enumerate(rows):
        cells = []
        for key, _ in SIDES:
            side = sides.get(key) or {}
            step = side.get("step")
            cells.append(fmt(step) if step else _why(side) if i == 0 else "—")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    out.extend(_statements(sides))
    out.extend(_one_owner((sides.get("citus") or {}).get("one_owner")))
    out.extend(_one_client(sides))
    check = c.get("one_node") or {}
    if check:
        verdict = {True: "passed", False: "FAILED", None: "not run"}[check.get("passed")]
        out.append(
            f"Every statement that serves a request reaches one node: `{check.get('test')}` "
            f"on the cluster, {verdict}.\n"
        )
    return out


def _label(sides: R, key: str, name: str) -> str:
    side = sides.get(key) or {}
    where = side.get("label", "")
    version = f", PostgreSQL {side['version'].split()[0]}" if side.get("version") else ""
    citus = f", Citus {side['citus']}" if side.get("citus") else ""
    return f"{name} ({where}{version}{citus})" if where else name


def _why(side: R) -> str:
    if "skipped" in side:
        return f"skipped: {side['skipped']}"
    if "error" in side:
        return "failed: " + str(side["error"]).splitlines()[0][:200].replace("|", "/")
    return "—"


def _cores(step: R) -> str:
    cores = step["cpu"]["cores"]
    nodes = step["cpu"].get("postgres_nodes_cores") or {}
    node_text = " + ".join(f"{v:.2f}" for v in nodes.values()) or "—"
    return f"{n_(cores.get('server'), 2)} / {n_(cores.get('postgres'), 2)} / {node_text}"


def _durability(sides: R) -> str:
    parts = []
    for key, name in SIDES:
        side = sides.get(key) or {}
        nodes = side.get("nodes") or {}
        settings = nodes or ({"": side["settings"]} if side.get("settings") else {})
        if not settings:
            continue
        texts = {
            port: ", ".join(f"{k} {v.get(k, '?')}" for k in DURABILITY)
            for port, v in settings.items()
        }
        if len(set(texts.values())) == 1:
            every = "every node: " if len(texts) > 1 else ""
            parts.append(f"{name}, {every}{next(iter(texts.values()))}")
        else:
            parts.append(f"{name}, " + "; ".join(f"node {p}: {t}" for p, t in texts.items()))
    return "; ".join(parts) if parts else "settings not recorded"


def _statements(sides: R) -> list[str]:
    runs = [(name, r) for key, name in SIDES for r in (sides.get(key) or {}).get("pgbench", [])]
    if not runs:
        return []
    out = [
        "Each statement's cost: pgbench (`-M prepared`, `-r`) runs the generation script of "
        "the throughput scenarios (`sql/queries.sql`'s `reserve_pair`, then `flush` for that "
        "message with its events and final status) against each side's database after its "
        "step, over the same projects, each client count for "
        f"{runs[0][1]['seconds']:g} s; on Citus through the coordinator. Mean latency per "
        "statement, and the CPU of every PostgreSQL node per generation:\n",
        "| database | clients | generations/s | latency avg ms | reserve_pair ms | flush ms "
        "| PostgreSQL CPU ms per generation (all nodes) | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs:
        per = r.get("statement_latency_ms") or {}
        out.append(
            f"| {name} | {r['clients']} | {n_(r['rate'])} | {n_(r['latency_avg_ms'], 2)} "
            f"| {n_(per.get('reserve_pair'), 2)} | {n_(per.get('flush'), 2)} "
            f"| {n_(r.get('database_cpu_ms_per_generation'), 2)} | {r['failed']} |"
        )
    return [*out, ""]


def _one_owner(one: R | None) -> list[str]:
    if not one:
        return []
    home = one.get("owner_node")
    out = [
        "Where a request's statements run, not only where EXPLAIN plans them: pgbench with one "
        "client on one owner (whose shards are on the worker node on port "
        f"{home}), a reservation alone and then whole generations, and the transactions "
        "committed in the database on each worker node meanwhile, per reservation or "
        "generation (a worker that holds none of the owner's shards should see about none):\n",
    ]
    by = one.get("by_script") or {}
    ports = sorted({p for v in by.values() for p in v["commits_per_one"]})
    heads = [f"worker {p}" + (" (the owner's)" if p == str(home) else "") for p in ports]
    out.append("| statements | runs | " + " | ".join(heads) + " |")
    out.append("|---|---|" + "---|" * len(ports))
    for label, v in by.items():
        cells = " | ".join(n_(v["commits_per_one"].get(p), 2) for p in ports)
        out.append(f"| `{label}` | {v['generations']} | {cells} |")
    return [*out, ""]


def _one_client(sides: R) -> list[str]:
    """Where a call's time goes with nothing competing (``Scenario.one_client``)."""
    single = (sides.get("single") or {}).get("one_client_ms") or {}
    citus = ((sides.get("citus") or {}).get("one_owner") or {}).get("one_client_ms") or {}
    places = [(f"one PostgreSQL: {k}", v) for k, v in single.items()]
    places += [(f"Citus: {k}", v) for k, v in citus.items()]
    if not places:
        return []
    out = [
        "Where a call's time goes, with nothing competing: pgbench with one client on one "
        "owner, mean latency in ms of a round trip alone and of a reservation alone; on Citus "
        "sent to the coordinator (which delegates the call to the owner's node) and sent to "
        "that node itself (the same call where its shards are, no hop):\n",
        "| sent to | `SELECT 1` | `reserve_pair` |",
        "|---|---|---|",
    ]
    for name, v in places:
        out.append(f"| {name} | {n_(v.get('SELECT 1'), 2)} | {n_(v.get('reserve_pair'), 2)} |")
    return [*out, ""]
