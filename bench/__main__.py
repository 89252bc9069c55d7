"""``python -m bench [--quick | --smoke]``: run the benchmark, write the results and the report.

Full: under 25 minutes on 2 cores (the model-pace scenario on two databases; more with
``--baseline``). ``--quick``: a few minutes, smaller sizes. ``--smoke``: a few seconds of each
scenario at tiny sizes, for the test suite (pair it with ``--results-dir``, ``--report`` and
``--plots-dir`` in a temporary directory so the committed report is untouched). ``--only``: some
scenarios alone (``--only citus``: the Citus step, ``bench.citus``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import machine, report, source
from bench.citus import setup as citus_setup
from bench.database import Cluster
from bench.pace import setup as pace_setup
from bench.plan import PLANS
from bench.profile import py_spy
from bench.scenarios import Bench, wait_quiet

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("bench")
SCENARIOS = ("throughput", "resume", "open_streams", "seed_method", "model_pace", "citus")


def counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(n) for n in text.split(",") if n.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError("give whole numbers, comma-separated") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("give at least one number, each at least 1")
    return values


def scenario_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(SCENARIOS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller and shorter (a few minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny, seconds (for the test suite)")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plots-dir", type=Path, default=REPO_ROOT / "docs")
    parser.add_argument("--no-profile", action="store_true", help="do not run py-spy")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="PostgreSQL with fsync and synchronous commit (default: tuned like the tests)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine's other load to drop below 0.3 cores",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and data")
    parser.add_argument(
        "--only",
        type=scenario_names,
        default=SCENARIOS,
        metavar="NAMES",
        help=f"run only these scenarios (comma-separated: {', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--model-pace-database-url",
        default="auto",
        metavar="URL",
        help="the external PostgreSQL of the model-pace scenario (a database is created on it "
        "and dropped); 'auto' (default): the one on 127.0.0.1:5432 if it answers (full and "
        "quick runs); 'none': the embedded one only",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the model-pace scenario on the server code of git revision REV, side "
        "by side (the build before the write-path rewrite)",
    )
    parser.add_argument(
        "--pace-counts",
        type=counts,
        metavar="N[,N...]",
        help="the model-pace steps' numbers of concurrent answers, instead of the plan's",
    )
    parser.add_argument(
        "--citus-url",
        default=os.environ.get("CITUS_URL") or None,
        metavar="URL",
        help="the Citus step's cluster: a coordinator's URL, database postgres, its workers "
        "registered (default: CITUS_URL; without it, a local cluster made with "
        "../shared/citus/cluster.sh, or CITUS_SHARED's, when Citus is installed)",
    )
    parser.add_argument(
        "--citus-port",
        type=int,
        default=int(os.environ.get("CITUS_PORT") or 9700),
        metavar="PORT",
        help="the local cluster's coordinator port; its workers take the next ones "
        "(default: CITUS_PORT, or 9700)",
    )
    parser.add_argument(
        "--citus-answers",
        type=int,
        metavar="N",
        help="the Citus step's number of concurrent answers, instead of the plan's",
    )
    parser.add_argument(
        "--pace-client",
        choices=("auto", "c", "python"),
        default="auto",
        help="the model-pace client: C when gcc is there (auto, c), or the Python one",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.citus_answers:
        plan = dataclasses.replace(
            plan, citus=dataclasses.replace(plan.citus, answers=args.citus_answers)
        )
    if args.pace_counts:
        plan = dataclasses.replace(
            plan, pace=dataclasses.replace(plan.pace, counts=args.pace_counts)
        )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    nofile = machine.raise_nofile_limit(65536)
    niceness = machine.raise_priority(5)
    background = await wait_quiet(args.wait_quiet) if args.wait_quiet else await wait_quiet(0)
    workdir = Path(tempfile.mkdtemp(prefix="orderly-bench-"))
    logger.info("bench %s: work directory %s", plan.name, workdir)
    errors: dict[str, str] = {}
    profile = not args.no_profile and plan.profile_s > 0 and py_spy() is not None
    snapshot = source.snapshot(workdir)
    code = source.describe(snapshot)
    builds = pace_setup.builds(workdir, snapshot, args.baseline)
    cluster = await asyncio.to_thread(Cluster.start, workdir, durable=args.durable)
    bench = Bench(plan, workdir, args.results_dir, stamp, cluster, profile, snapshot)

    async def model_pace() -> None:
        pace, skipped = await pace_setup.scenario(
            plan=plan,
            workdir=workdir,
            results_dir=args.results_dir,
            stamp=stamp,
            embedded_url=cluster.admin_url,
            builds=builds,
            database_option=args.model_pace_database_url,
            client_option=args.pace_client,
            profile=profile,
        )
        try:
            await pace.run(skipped)
        finally:
            bench.results["model_pace"] = pace.results
            bench.profiles.update(pace.profiles)

    async def citus() -> None:
        await citus_setup.step(
            plan=plan,
            workdir=workdir,
            results_dir=args.results_dir,
            stamp=stamp,
            build=builds[0],
            bin_dir=cluster.bin_dir,
            url=args.citus_url,
            port=args.citus_port,
            database_option=args.model_pace_database_url,
            client_option=args.pace_client,
            into=bench.results.setdefault("citus", {}),
        )

    async def step(name: str, action: Callable[[], Awaitable[None]]) -> None:
        t0 = time.monotonic()
        try:
            await action()
        except Exception as exc:
            logger.error("scenario %s failed: %s", name, exc)
            errors[name] = "".join(traceback.format_exception(exc))[-3000:]
        bench.results.setdefault("scenario_seconds", {})[name] = round(time.monotonic() - t0, 1)

    try:
        await bench.prepare()
        actions = {
            "throughput": bench.throughput,
            "resume": bench.resume,
            "open_streams": bench.open_streams,
            "seed_method": bench.seed_method,
            "model_pace": model_pace,
            "citus": citus,
        }
        for name in SCENARIOS:
            if name in args.only:
                await step(name, actions[name])
        pg_settings = await cluster.settings()
    finally:
        await asyncio.to_thread(cluster.stop)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, Any] = {
        "format": 1,
        "mode": plan.name,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "scenarios_run": [n for n in SCENARIOS if n in args.only],
        "stamp": stamp,
        "machine": machine.describe(cluster.version),
        "duration_s": round(time.monotonic() - started, 1),
        "plan": plan.as_dict(),
        "postgres": {"version": cluster.version, "durable": args.durable, **pg_settings},
        "client": {
            "kind": "bench.load: Python asyncio raw-socket HTTP/1.1 client on uvloop, "
            "keep-alive, one process",
            "nofile_limit": nofile,
        },
        "servers": bench.servers,
        "source": code,
        "background_cores_before": background,
        "niceness": niceness,
        "scenarios": bench.results,
        "profiles": bench.profiles,
        "errors": errors,
    }
    if args.keep_workdir:
        results["workdir"] = str(workdir)
    results["targets"] = report.evaluate_targets(results)
    path = args.results_dir / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report.write(results, args.report, args.plots_dir, results_file=path)
    logger.info("results: %s; report: %s", path, args.report)
    for target in results["targets"]:
        logger.info("  %s: %s (%s)", target["name"], target["measured_text"], target["verdict"])
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    logging.getLogger("server").setLevel(logging.WARNING)  # the migration runner's notes
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
