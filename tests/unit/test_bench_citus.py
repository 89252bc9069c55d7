"""The benchmark's Citus step, its own logic: the targets and the report when the step was
skipped, ran at another size or failed its one-node check, and pgbench's per-statement
latencies. (The step itself needs a cluster: ``python -m bench --only citus``.)"""

from __future__ import annotations

from typing import Any

from bench.citus.report import section, targets
from bench.pgbench import PgbenchRun, generation_script, reserve_script, statement_latencies
from bench.server import REPO_ROOT

PGBENCH_R = """\
latency average = 8.571 ms
initial connection time = 10.2 ms
tps = 933.4 (without initial connection time)
statement latencies in milliseconds and failures:
         0.002           0  \\set n random(:lo, :hi)
         3.888           0  WITH project AS (
         4.293           0  WITH lease AS (
"""


def test_pgbench_statement_latencies_are_named_in_script_order() -> None:
    found = statement_latencies(PGBENCH_R)
    assert [ms for ms, _ in found] == [0.002, 3.888, 4.293]
    run = PgbenchRun(8, 4.0, 933.4, 3700, 0, 8.571, False, "", found)
    assert run.named_latencies() == {"reserve_pair": 3.888, "flush": 4.293}
    assert run.as_dict()["statement_latency_ms"] == {"reserve_pair": 3.888, "flush": 4.293}
    assert statement_latencies("tps = 1.0 (without initial connection time)\n") == []


def results(citus: dict[str, Any]) -> dict[str, Any]:
    return {"scenarios_run": ["citus"], "scenarios": {"citus": citus}}


def test_a_skipped_step_says_why_in_its_targets_and_its_section() -> None:
    out = results({"skipped": "no CITUS_URL, and no ../shared/citus/cluster.sh"})
    found = targets(out)
    assert len(found) == 4
    assert all(t["met"] is None and "skipped: no CITUS_URL" in t["verdict"] for t in found)
    assert "Skipped in this run: no CITUS_URL" in "\n".join(section(out))


def step(p99: float, lag: float) -> dict[str, Any]:
    return {
        "pace_rows": {"p50": 1.0, "p99": p99},
        "lag": {"p99_ms": lag},
        "first_delta_ms": {"p99": 90.0},
        "wal_per_answer_byte": 30.0,
        "events_per_s": 40_000,
        "cpu": {"cores": {"server": 1.0, "postgres": 0.5}},
        "failures": 0,
        "invariants": {"ok": True},
    }


def test_targets_read_the_citus_side_at_1000_and_the_one_node_check() -> None:
    sides = {"single": {"step": step(1.0, 40.0)}, "citus": {"step": step(1.3, 120.0)}}
    out = results({"answers": 1000, "sides": sides, "one_node": {"test": "t", "passed": False}})
    pace, lag, one_node, _ = targets(out)
    assert (pace["measured"], pace["met"]) == (1.3, False)
    assert (lag["measured"], lag["met"]) == (120.0, True)
    assert (one_node["met"], one_node["verdict"]) == (False, "missed")
    text = "\n".join(section(out))
    assert "| pace p50 / p99 | 1.00 / 1.00 | 1.00 / 1.30 |" in text


def test_a_smaller_run_is_reported_but_judges_no_target() -> None:
    out = results({"answers": 100, "sides": {"citus": {"step": step(1.0, 10.0)}}})
    pace, lag, *_ = targets(out)
    assert pace["met"] is None and "not at 1,000 answers" in pace["verdict"]
    assert lag["met"] is None
    assert "| delivery lag p99 ms | — | 10 |" in "\n".join(section(out))


def test_a_failed_step_misses_its_targets_and_says_why() -> None:
    error = "RuntimeError: warm-up: 23 answer(s) still running 30 s after their cancel"
    out = results({"answers": 1000, "sides": {"citus": {"error": error, "pgbench": []}}})
    pace, lag, *_ = targets(out)
    assert pace["met"] is False and lag["met"] is False
    assert "23 answer(s) still running" in pace["verdict"]
    assert "failed: RuntimeError: warm-up" in "\n".join(section(out))


def test_a_generation_that_commits_on_another_worker_misses_the_one_node_target() -> None:
    by = {
        "reserve_pair": {"generations": 40, "commits_per_one": {"9601": 5.1, "9602": 2.0}},
        "reserve_pair + flush": {"generations": 20, "commits_per_one": {"9601": 9.0, "9602": 4.1}},
    }
    one = {"owner_node": 9601, "by_script": by, "other_nodes_commits_per_generation": 4.1}
    out = results({"answers": 1000, "sides": {"citus": {"one_owner": one}}})
    found = targets(out)[-1]
    assert (found["measured"], found["met"]) == (4.1, False)
    text = "\n".join(section(out))
    assert "| `reserve_pair + flush` | 20 | 9.00 | 4.10 |" in text


def test_the_reservation_script_stops_before_the_flush() -> None:
    generation, _ = generation_script(REPO_ROOT / "sql" / "queries.sql")
    reserve = reserve_script(generation)
    assert generation.startswith(reserve.removesuffix(";\n"))
    assert "reserve_pair" not in reserve and "INSERT INTO messages" in reserve
    assert "new_chunks" not in reserve and "\\aset" not in reserve


def test_the_delegated_reservation_script_is_the_call_alone() -> None:
    """On Citus the reservation alone is its call, without the read-back of the answer's id
    that the generation script needs for its flush (one statement, as on one PostgreSQL)."""
    generation, _ = generation_script(REPO_ROOT / "sql" / "queries.sql", delegated=True)
    reserve = reserve_script(generation)
    assert reserve.count("SELECT ") == 1 and "orderly_call_reserve_pair(" in reserve
    assert reserve.endswith(");\n") and "FROM messages" not in reserve
    assert generation.startswith(reserve.removesuffix(";\n"))
