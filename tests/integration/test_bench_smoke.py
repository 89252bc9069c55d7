"""The benchmark harness (``python -m bench``) runs end to end in its smallest mode.

Only that it completes and writes its results and report with the expected keys: no timing is
asserted (the numbers of a smoke run on a busy machine mean nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIOS = (
    "throughput",
    "ratios",
    "sequence_check",
    "first_event",
    "history",
    "resume",
    "open_streams",
    "seed_method",
    "model_pace",
    "citus",
)
EARLIER_TARGETS = 6


def test_bench_smoke_writes_results_and_report(tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "bench"
    report = out / "benchmarks.md"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--smoke",
        "--no-profile",
        "--results-dir",
        str(out),
        "--report",
        str(report),
        "--plots-dir",
        str(out),
    ]
    # With an external PostgreSQL (CI's second run), the model-pace scenario runs there too.
    external = os.environ.get("TEST_DATABASE_URL")
    command += ["--model-pace-database-url", external or "none"]
    done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-5000:]

    files = list(out.glob("*.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())
    for key in ("machine", "plan", "postgres", "client", "servers", "scenarios", "targets"):
        assert key in results, key
    assert results["mode"] == "smoke"
    assert results["errors"] == {}
    for key in SCENARIOS:
        assert key in results["scenarios"], key
    for kind in ("spread", "contended"):
        assert results["scenarios"]["ratios"][kind]["peak_ratio"] is not None
    # Correctness, not speed: the service's sequences are exactly 1..N after the load.
    assert results["scenarios"]["sequence_check"]["service_contended"]["ok"]
    assert results["scenarios"]["sequence_check"]["service_spread"]["ok"]
    assert all(t["measured"] is not None for t in results["targets"][:EARLIER_TARGETS])
    assert any(t["name"].startswith("model pace") for t in results["targets"])
    # The first-event step says what PostgreSQL's backends did meanwhile: sampled, and the
    # service's statements named from sql/queries.sql (reservations and flushes run all along).
    waits = results["scenarios"]["first_event"]["postgres_waits"]
    assert waits["samples"] > 0
    named = {row["what"].partition(" | ")[0] for row in waits["top"]}
    assert named & {"reserve_pair", "flush"}, waits

    # The model-pace scenario ran its steady steps, a burst beside each and the long-answer
    # pair, with the C client and the Python one, and every invariant held (the scenario fails
    # otherwise).
    pace = results["scenarios"]["model_pace"]
    assert pace["invariants_ok"]
    databases = ["embedded", *(["external"] if external else [])]
    for name in databases:
        build = pace["databases"][name]["builds"]["current"]
        steady, burst = build["sweep"][0], build["bursts"][0]
        assert (steady["kind"], burst["kind"]) == ("steady", "burst")
        assert steady["window"]["start_s"] > 0 and steady["lag"]["count"] > 0
        assert steady["lag_by_second"] and burst["lag_by_second"]
        assert steady["answers"] > steady["n"]  # the slots ran answers back to back
        long = build["long"]
        assert long["long"]["wal_per_answer_byte"] is not None
        assert long["short"]["answers"] > long["long"]["answers"]
        # The reasoning pair: the thinking side's answers reasoned (their reasoning counts in
        # their bytes, about as many as the text side's answers), at the same pace of pieces.
        # Two rounds in smoke mode, the sides' order alternating; the ratios of their medians.
        pair = build["reasoning"]
        assert [r["order"] for r in pair["rounds"]] == [["text", "thinking"], ["thinking", "text"]]
        for done in pair["rounds"]:
            text_side, thinking = done["text"], done["thinking"]
            assert text_side["invariants"]["ok"] and thinking["invariants"]["ok"]
            assert 0.7 < thinking["mean_answer_bytes"] / text_side["mean_answer_bytes"] < 1.4
            assert thinking["lag"]["count"] > 0
        medians = pair["medians"]
        assert pair["wal_ratio_thinking_to_text"] == round(
            medians["thinking"]["wal_per_answer_byte"] / medians["text"]["wal_per_answer_byte"], 3
        )
        # The WAL split by kind of record, unless the harness said why it could not read it.
        window = steady["wal"]["window"]
        assert "record_bytes" in window or build.get("wal_records") or window.get("error")
    embedded = pace["databases"]["embedded"]["builds"]["current"]
    assert "fpi_bytes" in embedded["sweep"][0]["wal"]["window"]  # the run's own cluster
    if pace["client"]["kind"] == "c":
        assert embedded["python_client"]["client"] == "python"

    # The Citus step starts no cluster in smoke mode, and says so.
    assert "smoke mode" in results["scenarios"]["citus"]["skipped"]

    text = report.read_text()
    assert text.startswith("# Benchmarks")
    assert "## Targets" in text
    assert "| statement or process | waiting for | backends |" in text
    assert "## Streaming at a model's pace (9)" in text
    assert "answers that reason first, beside text alone" in text
    assert "Steady state against a burst" in text and "### WAL: records and full-page" in text
