"""The Citus step (issue 19, item 4): the same steady model-pace step (N answers open at 40
deltas a second, the model-pace scenario's shape and client) on one PostgreSQL and on a Citus
cluster, both durable, one after the other in the same run; then pgbench on the service's own
statements (``bench.pgbench``'s generation script: ``reserve_pair``, then ``flush``) against each,
with each statement's mean latency; then the EXPLAIN test that every request statement reaches
one node, run on the cluster.

Each side gets a fresh database migrated by ``python -m server migrate`` (on Citus that creates
the distributed layout), seeded as the model-pace scenario seeds its own, and dropped at the end.
The WAL of the Citus side is summed over its nodes (each node's insert position before and after
the window); its CPU is the coordinator's and the worker nodes' postmasters' process trees.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from bench import database, pgbench
from bench.citus.cluster import CitusTarget, Cluster, citus_target, node_url
from bench.machine import CpuMeter
from bench.pace.figures import NODE_PREFIX
from bench.pace.run import Client
from bench.pace.scenario import PROJECT_BASE, Build, ModelPace
from bench.pace.step import Context
from bench.pace.target import Target
from bench.plan import Plan
from bench.scenarios import with_other
from bench.server import REPO_ROOT

logger = logging.getLogger("bench")
ONE_OWNER_S = 3.0  # each pgbench run on one owner
STATS_FLUSH_S = 2.0
ONE_NODE_TEST = (
    "tests/integration/test_operations.py::test_every_request_statement_runs_on_one_node"
)


@dataclasses.dataclass
class CitusStep:
    plan: Plan
    workdir: Path
    results_dir: Path
    stamp: str
    build: Build
    client: Client
    bin_dir: Path  # pgbench's
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    async def run(self, cluster: Cluster, single: Target | None, single_why: str) -> None:
        """Both sides (one PostgreSQL first, when there is one), then the EXPLAIN test."""
        citus = citus_target(cluster, self.stamp)
        p = self.plan.citus
        self.results.update(
            answers=p.answers,
            cluster={
                "origin": cluster.origin,
                "coordinator": "{}:{}".format(*cluster.coordinator),
                "workers": [f"{host}:{port}" for host, port in cluster.workers],
            },
            sides={} if single else {"single": {"skipped": single_why}},
        )
        pace = ModelPace(
            dataclasses.replace(self.plan.pace, counts=(p.answers,), compare_clients=False),
            self.workdir,
            self.results_dir,
            self.stamp,
            [self.build],
            [t for t in (single, citus) if t is not None],
            self.client,
            self.client,
            None,
        )
        broken: list[str] = []
        for key, side in (("single", single), ("citus", citus)):
            if side is None:
                continue
            entry = await side.describe()
            self.results["sides"][key] = entry
            try:
                entry.update(await self.side(pace, side, broken))
            except Exception as exc:
                logger.exception("citus step: the %s side failed", key)
                entry["error"] = describe(exc)
                broken.append(f"{key}: {exc!r}"[:500])
            finally:
                await side.drop()
        broken += pace.broken
        self.results["server_settings"] = pace.results.get("server_settings")
        self.results["one_node"] = await one_node_check(cluster.url)
        if broken:
            raise RuntimeError("; ".join(broken))

    async def side(self, pace: ModelPace, side: Target, broken: list[str]) -> dict[str, Any]:
        """The steady step, then pgbench on the same database (also when the step failed: a
        side too slow for the step's N still has its statements' cost measured)."""
        n = self.plan.citus.answers
        ctx = await pace.context(side, self.build)
        logger.info("citus step: %d answers on %s", n, side.label)
        out: dict[str, Any] = {}
        try:
            async with pace.server(ctx, self.build, "citus", pace.steady(n)) as server:
                out["step"] = await pace.step(ctx, server, pace.steady(n), f"c{n}")
        except Exception as exc:
            logger.exception("citus step: the steady step on %s failed", side.label)
            out["error"] = describe(exc)
            broken.append(f"{side.key}: {exc!r}"[:500])
        delegated = isinstance(side, CitusTarget)  # the statements as the service calls them
        out["pgbench"] = [
            await self.pgbench(ctx, clients, delegated=delegated)
            for clients in self.plan.citus.pgbench_clients
        ]
        if not delegated:
            out["one_client_ms"] = await self.one_client(ctx, {"postgres": ctx.url})
        if isinstance(side, CitusTarget):
            try:
                out["one_owner"] = await self.one_owner(ctx, side)
            except Exception as exc:
                logger.exception("citus step: the one-owner run failed")
                out["one_owner"] = {"error": describe(exc)}
                broken.append(f"one owner: {exc!r}"[:500])
        return out

    async def one_owner(self, ctx: Context, side: CitusTarget) -> dict[str, Any]:
        """Which worker nodes a request's statements reach when they run, not only as
        EXPLAIN plans them: pgbench with one client on one owner (a reservation alone, then
        whole generations), and the transactions committed in the database on each worker
        node meanwhile (``pg_stat_database.xact_commit``), per generation. A statement that
        reaches one node leaves the other workers at about zero (their own background work)."""
        assert side.cluster is not None
        n = ctx.numbers[0]
        owner = database.user_id(n)
        home = await _home_port(ctx.url, owner)
        name = ctx.url.rsplit("/", 1)[-1]
        workers = {
            port: node_url(side.cluster.url, host, port, name)
            for host, port in side.cluster.workers
        }
        generation, _ = pgbench.generation_script(self.build.source.queries, delegated=True)
        out: dict[str, Any] = {"owner_node": home, "by_script": {}}
        for label, text in (
            ("reserve_pair", pgbench.reserve_script(generation)),
            ("reserve_pair + flush", generation),
        ):
            script = self.workdir / "citus-one-owner.pgbench.sql"
            script.write_text(text)
            before = await _commits(workers)
            run = await pgbench.run_pgbench(
                self.bin_dir,
                ctx.url,
                script,
                clients=1,
                seconds=ONE_OWNER_S,
                variables={"lo": n, "hi": n},
            )
            await asyncio.sleep(STATS_FLUSH_S)  # a backend's counts reach the view within 1 s
            after = await _commits(workers)
            per = {
                str(port): round((after[port] - before[port]) / max(1, run.transactions), 2)
                for port in workers
            }
            out["by_script"][label] = {"generations": run.transactions, "commits_per_one": per}
            logger.info(
                "  citus step: %s on one owner (home node %s): commits per one on each worker %s",
                label,
                home,
                per,
            )
        out["one_client_ms"] = await self.one_client(
            ctx, {"coordinator": ctx.url, "owner's node": workers[home]} if home else {}
        )
        whole = out["by_script"]["reserve_pair + flush"]["commits_per_one"]
        others = [v for port, v in whole.items() if port != str(home)]
        out["other_nodes_commits_per_generation"] = max(others) if others else 0.0
        return out

    async def one_client(self, ctx: Context, urls: dict[str, str]) -> dict[str, Any]:
        """Where a call's time goes, with nothing competing: pgbench with one client on one
        owner, a round trip alone (``SELECT 1``) and a reservation alone, on each of ``urls``:
        on Citus the coordinator (the call delegated to the owner's node) and that node itself
        (the same call run where its shards are: no hop), on one PostgreSQL the server. Mean
        latency in ms of each."""
        n = ctx.numbers[0]
        delegated = isinstance(ctx.target, CitusTarget)
        generation, _ = pgbench.generation_script(self.build.source.queries, delegated=delegated)
        out: dict[str, Any] = {}
        for where, url in urls.items():
            for label, text in (
                ("SELECT 1", "SELECT 1;\n"),
                ("reserve_pair", pgbench.reserve_script(generation)),
            ):
                script = self.workdir / "citus-one-client.pgbench.sql"
                script.write_text(text)
                run = await pgbench.run_pgbench(
                    self.bin_dir,
                    url,
                    script,
                    clients=1,
                    seconds=ONE_OWNER_S,
                    variables={"lo": n, "hi": n},
                )
                out.setdefault(where, {})[label] = run.latency_ms
        logger.info("  citus step [%s] one client, mean ms: %s", ctx.target.key, out)
        return out

    async def pgbench(self, ctx: Context, clients: int, *, delegated: bool) -> dict[str, Any]:
        """The generation script over the side's seeded projects (after its step: the server
        is stopped), each statement's mean latency (``-r``) and the CPU of every node."""
        script_text, info = pgbench.generation_script(
            self.build.source.queries, delegated=delegated
        )
        script = self.workdir / "citus-generation.pgbench.sql"
        script.write_text(script_text)
        seconds = self.plan.citus.pgbench_s
        cpu: dict[str, Any] = {}
        tasks: list[asyncio.Task[None]] = []

        async def measure(pid: int) -> None:
            roots = {"pgbench": pid, **ctx.nodes}
            if ctx.postmaster is not None:
                roots["postgres"] = ctx.postmaster
            meter = CpuMeter(roots)
            await asyncio.sleep(0.5)
            meter.start()
            await asyncio.sleep(max(0.5, seconds - 1.0))
            cpu.update(with_other(meter.stop()))

        def on_start(pid: int) -> None:
            tasks.append(asyncio.create_task(measure(pid)))

        run = await pgbench.run_pgbench(
            self.bin_dir,
            ctx.url,
            script,
            clients=clients,
            seconds=seconds,
            variables={"lo": PROJECT_BASE, "hi": PROJECT_BASE + len(ctx.numbers) - 1},
            on_start=on_start,
            per_statement=True,
        )
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
        result = {**run.as_dict(), "cpu_cores": cpu, "script": info["statements"]}
        database_cores = cpu.get("postgres", 0.0) + sum(
            v for k, v in cpu.items() if k.startswith(NODE_PREFIX)
        )
        if run.tps:
            result["database_cpu_ms_per_generation"] = round(database_cores * 1000 / run.tps, 3)
        logger.info(
            "  citus step [%s] pgbench %d clients: %.0f generations/s, %s ms, statements %s, "
            "database %.2f cores",
            ctx.target.key,
            clients,
            run.tps,
            run.latency_ms,
            run.named_latencies(),
            database_cores,
        )
        return result


async def _home_port(url: str, owner: UUID) -> int | None:
    """The worker node holding ``owner``'s shards."""
    conn = await asyncpg.connect(url)
    try:
        port = await conn.fetchval(
            "SELECT n.nodeport FROM pg_dist_placement AS pl JOIN pg_dist_node AS n"
            " USING (groupid)"
            " WHERE pl.shardid = get_shard_id_for_distribution_column('projects', $1::uuid)",
            owner,
        )
    finally:
        await conn.close()
    return int(port) if port is not None else None


async def _commits(workers: dict[int, str]) -> dict[int, int]:
    out = {}
    for port, url in workers.items():
        conn = await asyncpg.connect(url)
        try:
            out[port] = int(
                await conn.fetchval(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()
    return out


def describe(exc: BaseException) -> str:
    """The exception, and where in the harness it was raised when it says nothing itself (a
    timeout)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if not str(exc):
        ours = [f for f in traceback.extract_tb(exc.__traceback__) if "/bench/" in f.filename]
        if ours:
            text += f" (in {Path(ours[-1].filename).name}, {ours[-1].name})"
    return text[:2000]


async def one_node_check(url: str) -> dict[str, Any]:
    """The EXPLAIN test on the cluster (``make test-citus`` runs it too): every statement that
    serves a request reaches one node."""
    if not (REPO_ROOT / ONE_NODE_TEST.split("::")[0]).exists():
        return {"test": ONE_NODE_TEST, "passed": None, "output": "the test is not here"}
    env = {k: v for k, v in os.environ.items() if k not in ("TEST_DATABASE_URL",)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", ONE_NODE_TEST, "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        env={**env, "TEST_CITUS_URL": url},
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
    logger.info("citus step: %s: %s", ONE_NODE_TEST, tail[-1] if tail else done.returncode)
    return {"test": ONE_NODE_TEST, "passed": done.returncode == 0, "output": "\n".join(tail)}
