"""Putting the Citus step together from the command line: the cluster (``--citus-url``, or a
local one when the CI machine's Citus tooling and Citus are here: else the step is skipped, and
the report says why), the single PostgreSQL beside it (the model-pace scenario's external one:
``--model-pace-database-url``, or the machine's on 127.0.0.1:5432) and the client."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

from bench.citus import cluster as citus_cluster
from bench.citus.scenario import CitusStep
from bench.pace import run
from bench.pace import setup as pace_setup
from bench.pace.scenario import Build
from bench.plan import Plan

logger = logging.getLogger("bench")


async def step(
    *,
    plan: Plan,
    workdir: Path,
    results_dir: Path,
    stamp: str,
    build: Build,
    bin_dir: Path,
    url: str | None,
    port: int,
    database_option: str,
    client_option: str,
    into: dict[str, Any],
) -> None:
    """Run the step, its results written into ``into`` as they come (``skipped`` and why, when
    there is no Citus here)."""
    if plan.name == "smoke" and not url:
        into["skipped"] = "no local cluster is started in smoke mode (give --citus-url)"
        return
    folder = citus_cluster.shared_folder()
    cluster, why = await citus_cluster.find(url, folder, port, plan.citus.workers)
    if cluster is None:
        into["skipped"] = why
        logger.info("citus step skipped: %s", why)
        return
    try:
        single, single_why = await pace_setup.external(database_option, plan, stamp)
        if single is not None:  # its own database names, apart from the model-pace scenario's
            single = dataclasses.replace(single, prefix=f"{single.prefix}_citus_side", created=[])
        client = run.build(workdir, client_option)
        citus = CitusStep(plan, workdir, results_dir, stamp, build, client, bin_dir, into)
        await citus.run(cluster, single, single_why or "")
    finally:
        await asyncio.to_thread(cluster.stop)
