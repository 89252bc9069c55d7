"""What a run did and saw: the one-line summary, the failure message, the soak's JSON lines and,
when a run fails, its evidence under test-artifacts/faults/."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.clients import ClientRecord
from tests.faults.proxy import ProxyStats
from tests.processes import REPO_ROOT, ServerProcess

SHOWN_VIOLATIONS = 40


@dataclass
class Run:
    seed: int
    window: float
    projects: list[list[str]]  # [user][i]; each user's last project is for the fresh answers
    records: list[ClientRecord] = field(default_factory=list)
    stats: ProxyStats = field(default_factory=ProxyStats)
    fault_log: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # answers by status (error code)
    healed_after: float = 0.0  # seconds from the run's start to the heal
    terminal_after: float | None = None  # seconds from the heal until nothing ran
    generator: str = "demo"
    outage_ended: float | None = None  # the long outage's end, time.monotonic()
    silences: dict[str, list[float]] = field(default_factory=dict)  # long ones, per process
    model_requests: int = 0  # GENERATOR=openai: requests the fake model server got
    violations: list[str] = field(default_factory=list)

    @property
    def fresh_project(self) -> str:
        return self.projects[0][-1]


def rerun_command(seed: int, window: float) -> str:
    return f"FAULT_SEED={seed} FAULT_SECONDS={window:g} make test PYTEST_ARGS=tests/faults"


def summary(run: Run) -> str:
    styles = Counter(record.plan.style for record in run.records)
    retries = sum(record.retries for record in run.records)
    notes = sum(len(record.notes) for record in run.records)
    terminal = "never" if run.terminal_after is None else f"{run.terminal_after:.1f}s"
    lines = [
        f"seed {run.seed}, window {run.window:g}s, GENERATOR={run.generator}"
        + (f" ({run.model_requests} model requests)" if run.generator == "openai" else "")
        + f": healed at {run.healed_after:.1f}s, "
        f"all terminal {terminal} later; {len(run.records)} generations {dict(styles)}, "
        f"ended {dict(run.outcomes)}; {retries} refusals retried, {notes} notes",
        f"proxy: {run.stats}",
        f"processes without a reply from PostgreSQL for long enough to lose a lease (s): "
        f"{run.silences}",
        *run.fault_log,
    ]
    return "\n".join(lines)


def failure_message(run: Run) -> str:
    shown = "\n".join(f"- {v}" for v in run.violations[:SHOWN_VIOLATIONS])
    more = len(run.violations) - SHOWN_VIOLATIONS
    return (
        f"seed {run.seed}: {len(run.violations)} violation(s); rerun with\n"
        f"    {rerun_command(run.seed, run.window)}\n"
        f"evidence: {artifacts_dir(run.seed)}\n{summary(run)}\n{shown}"
        + (f"\n... and {more} more" if more > 0 else "")
    )


def write_report(run: Run) -> None:
    """One JSON line per run in the file FAULT_REPORT names, when set (the soak's record)."""
    path = os.environ.get("FAULT_REPORT")
    if not path:
        return
    line = {
        "seed": run.seed,
        "window": run.window,
        "generator": run.generator,
        "healed_after": round(run.healed_after, 2),
        "terminal_after": None if run.terminal_after is None else round(run.terminal_after, 2),
        "generations": len(run.records),
        "styles": dict(Counter(record.plan.style for record in run.records)),
        "outcomes": dict(run.outcomes),
        "proxy": dataclasses.asdict(run.stats),
        "faults": run.fault_log,
        "silences": run.silences,
        "violations": run.violations,
    }
    with open(path, "a") as report:
        report.write(json.dumps(line) + "\n")


def artifacts_dir(seed: int) -> Path:
    return REPO_ROOT / "test-artifacts" / "faults" / f"seed-{seed}"


def save_evidence(
    run: Run, servers: Sequence[ServerProcess], rows: Sequence[Any], postgres_log: str
) -> None:
    """The servers' logs, PostgreSQL's (the run's part), every client's record and the message
    rows: for a failed run, or for any run with FAULT_EVIDENCE set."""
    where = artifacts_dir(run.seed)
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for server in servers:
        shutil.copy(server.log_path, where / server.log_path.name)
    (where / "postgresql.log").write_text(postgres_log)
    (where / "clients.json").write_text(
        json.dumps([_record(r) for r in run.records], indent=1, default=str)
    )
    (where / "messages.json").write_text(
        json.dumps([dataclasses.asdict(row) for row in rows], indent=1, default=str)
    )
    (where / "run.txt").write_text(failure_message(run) + "\n")


def _record(record: ClientRecord) -> dict[str, Any]:
    return {
        "plan": dataclasses.asdict(record.plan),
        "project_id": record.project_id,
        "message_id": record.message_id,
        "pieces": [[(e.id, e.event, e.data[:120]) for e in piece] for piece in record.pieces],
        "starts": record.starts,
        "cancels": record.cancels,
        "problems": record.problems,
        "notes": record.notes,
        "retries": record.retries,
        "accepted_at": record.accepted_at,
        "finished": record.finished,
    }
