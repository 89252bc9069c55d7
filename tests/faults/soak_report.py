"""Sum up a soak: ``python -m tests.faults.soak_report test-artifacts/soak.jsonl``.

Reads the JSON lines the fault suite writes when FAULT_REPORT is set (one per seed) and prints
what ran, what was injected, how the answers ended, and every seed that failed.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs recorded"
    injected: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for run in runs:
        injected.update(run["proxy"])
        outcomes.update(run["outcomes"])
    failed = [run for run in runs if run["violations"]]
    seeds = sorted(run["seed"] for run in runs)
    settle = [run["terminal_after"] for run in runs if run["terminal_after"] is not None]
    openai = sum(run.get("generator") == "openai" for run in runs)
    lines = [
        f"{len(runs)} seeds ({seeds[0]}..{seeds[-1]}), {runs[0]['window']:g}s of faults each, "
        f"{sum(run['generations'] for run in runs)} generations; {openai} seeds with "
        "GENERATOR=openai",
        f"answers ended: {dict(outcomes)}",
        f"injected: {dict(injected)}",
        f"all terminal after the heal: at most {max(settle, default=0):.1f}s",
        f"failed seeds: {len(failed)}",
    ]
    for run in failed:
        lines.append(f"  seed {run['seed']}: {len(run['violations'])} violation(s)")
        lines += [f"    - {violation[:300]}" for violation in run["violations"][:5]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(load(Path(sys.argv[1]))))
