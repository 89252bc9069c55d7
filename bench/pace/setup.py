"""Putting the model-pace scenario together from the command line: which builds (this one, and
``--baseline REV``), which databases (the embedded one; the external one given by
``--model-pace-database-url``, or found on 127.0.0.1:5432 by a full or quick run) and which
client."""

from __future__ import annotations

from pathlib import Path

from bench import source
from bench.pace import run, target
from bench.pace.scenario import Build, ModelPace
from bench.pace.target import Target
from bench.plan import Plan


def builds(workdir: Path, current: source.Source, baseline: str | None) -> list[Build]:
    """This build, and the baseline's snapshot when asked for (``git archive``)."""
    out = [Build("current", current, {"label": "this build", **source.describe(current)})]
    if baseline:
        snapshot = source.snapshot_revision(workdir, baseline)
        info = source.describe_revision(baseline)
        out.append(Build("baseline", snapshot, {"label": f"baseline {baseline}", **info}))
    return out


async def external(option: str, plan: Plan, stamp: str) -> tuple[Target | None, str | None]:
    """The external PostgreSQL, or why there is none. ``auto``: the machine's on
    127.0.0.1:5432 if it answers (full and quick runs); ``none``: not at all; else a URL, which
    must answer."""
    if option == "none":
        return None, "not asked for (--model-pace-database-url none)"
    if option == "auto":
        if plan.name == "smoke":
            return None, "not probed in smoke mode (give --model-pace-database-url)"
        failure = await target.probe(target.AUTO_URL)
        if failure:
            return None, f"no PostgreSQL answered at 127.0.0.1:5432 ({failure})"
        return target.external(target.AUTO_URL, stamp), None
    failure = await target.probe(option)
    if failure:
        raise RuntimeError(f"--model-pace-database-url: no PostgreSQL answered ({failure})")
    return target.external(option, stamp), None


async def scenario(
    *,
    plan: Plan,
    workdir: Path,
    results_dir: Path,
    stamp: str,
    embedded_url: str,
    builds: list[Build],
    database_option: str,
    client_option: str,
    profile: bool,
) -> tuple[ModelPace, dict[str, str]]:
    """The scenario, and the databases left out with the reason."""
    targets = [target.embedded(embedded_url)]
    skipped: dict[str, str] = {}
    ext, why = await external(database_option, plan, stamp)
    if ext is not None:
        targets.append(ext)
    elif why:
        skipped["external"] = why
    client = run.build(workdir, client_option)
    python = run.build(workdir, "python")  # for one step beside the C client, for its cost
    # The targets are set for the durable external server: profile there when it is in.
    profile_on = targets[-1].key if profile and plan.pace.profile_s > 0 else None
    pace = ModelPace(
        plan.pace, workdir, results_dir, stamp, builds, targets, client, python, profile_on
    )
    return pace, skipped
