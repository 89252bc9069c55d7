"""The Citus cluster of the Citus step: ``--citus-url`` (or ``CITUS_URL``: a coordinator's URL,
database ``postgres``, its workers registered there), or a local one made with the CI machine's
Citus tooling (``../shared/citus/cluster.sh``, ``CITUS_SHARED``) with ``DURABLE=1``, and stopped
at the end. Its databases are made on every node with the extension in them and the workers
registered (``CREATE DATABASE ... TEMPLATE`` would not copy a distribution); ``python -m server
migrate`` then creates the distributed layout itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import database
from bench.pace import target
from bench.pace.figures import NODE_PREFIX
from bench.pace.target import Target

logger = logging.getLogger("bench")
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PG15_CONFIG = Path("/usr/lib/postgresql/15/bin/pg_config")  # what cluster.sh runs
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")


@dataclass
class Cluster:
    """A coordinator (``url``: its ``postgres`` database) and its worker nodes."""

    url: str
    workers: list[tuple[str, int]]
    coordinator: tuple[str, int]
    origin: str  # how it came to be: "CITUS_URL" or "local, made with cluster.sh"
    directory: Path | None = None  # a local cluster's data: stopped and removed at the end
    script: Path | None = None

    @property
    def worker_urls(self) -> list[str]:
        return [node_url(self.url, host, port) for host, port in self.workers]

    def stop(self) -> None:
        if self.directory is None or self.script is None:
            return
        done = subprocess.run(
            [str(self.script), "stop", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            logger.warning("citus: stopping the local cluster: %s", done.stderr.strip())
        shutil.rmtree(self.directory, ignore_errors=True)


def node_url(url: str, host: str, port: int, name: str | None = None) -> str:
    """``url`` with its host and port (and database) replaced: another node, same user."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    path = f"/{name}" if name is not None else parts.path
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}", path=path))


def shared_folder() -> Path:
    return Path(os.environ.get("CITUS_SHARED") or REPO_ROOT.parent / "shared" / "citus")


def local_unavailable(folder: Path) -> str | None:
    """Why no local cluster can be made here, or None."""
    script = folder / "cluster.sh"
    if not os.access(script, os.X_OK):
        return f"no CITUS_URL, and no {script} (the CI machine's Citus tooling)"
    sharedir = subprocess.run(
        [str(PG15_CONFIG), "--sharedir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not sharedir or not (Path(sharedir) / "extension" / "citus.control").exists():
        return (
            f"no CITUS_URL, and Citus is not installed into PostgreSQL 15 "
            f"(run {folder / 'build.sh'})"
        )
    return None


async def find(
    url: str | None, folder: Path, port: int, workers: int
) -> tuple[Cluster | None, str]:
    """The cluster (started here when local), or None and why not."""
    if url:
        failure = await target.probe(url)
        if failure:
            raise RuntimeError(f"CITUS_URL: no PostgreSQL answered ({failure})")
        return await _described(url, "CITUS_URL"), ""
    why = local_unavailable(folder)
    if why:
        return None, why
    if await target.probe(f"postgresql://postgres@127.0.0.1:{port}/postgres") is None:
        raise RuntimeError(f"a server already answers on port {port}: choose --citus-port")
    script = folder / "cluster.sh"
    directory, coordinator = await asyncio.to_thread(start_local, script, port, workers)
    cluster = await _described(coordinator, "local, made with cluster.sh (DURABLE=1)")
    cluster.directory, cluster.script = directory, script
    return cluster, ""


def start_local(script: Path, port: int, workers: int) -> tuple[Path, str]:
    """A durable local cluster in a new directory: the directory and the coordinator's URL."""
    directory = Path(tempfile.mkdtemp(prefix="orderly-bench-citus-"))
    directory.chmod(0o755)  # as root, cluster.sh runs the servers as the user postgres
    done = subprocess.run(
        [str(script), "start", str(directory), str(port), str(workers)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DURABLE": "1"},
    )
    if done.returncode != 0:
        with contextlib.suppress(Exception):
            subprocess.run([str(script), "stop", str(directory)], capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"cluster.sh start failed: {done.stderr.strip()[-1500:]}")
    return directory, done.stdout.strip().splitlines()[-1]


async def _described(url: str, origin: str) -> Cluster:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT nodename, nodeport, groupid FROM pg_dist_node WHERE isactive ORDER BY nodeport"
        )
    finally:
        await conn.close()
    workers = [(r["nodename"], int(r["nodeport"])) for r in rows if r["groupid"] != 0]
    if not workers:
        raise RuntimeError(f"no worker node is registered in the postgres database of {url}")
    parts = urlsplit(url)
    here = (parts.hostname or "127.0.0.1", parts.port or 5432)
    coordinator = next(
        ((r["nodename"], int(r["nodeport"])) for r in rows if r["groupid"] == 0), here
    )
    return Cluster(url, workers, coordinator, origin)


@dataclass
class CitusTarget(Target):
    """The model-pace scenario's database on the cluster: made on every node, its WAL summed
    over the nodes, its worker nodes' CPU counted beside the coordinator's."""

    cluster: Cluster | None = field(default=None)

    @property
    def nodes(self) -> list[str]:
        """The ``postgres`` database of every node, the coordinator first."""
        assert self.cluster is not None
        return [self.cluster.url, *self.cluster.worker_urls]

    async def create(self, build: str, source: Path) -> str:
        assert self.cluster is not None
        name = f"{self.prefix}_{build}"
        for node in self.nodes:
            await database.drop_database(node, name)
            conn = await asyncpg.connect(node)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            conn = await asyncpg.connect(database.with_database(node, name))
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
            finally:
                await conn.close()
        self.created.append(name)
        url = database.with_database(self.cluster.url, name)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "SELECT citus_set_coordinator_host($1, $2)", *self.cluster.coordinator
            )
            for host, port in self.cluster.workers:
                await conn.execute("SELECT citus_add_node($1, $2)", host, port)
        finally:
            await conn.close()
        await database.migrate(url, source, name)
        return url

    async def drop(self) -> None:
        while self.created:
            name = self.created.pop()
            for node in self.nodes:
                try:
                    await database.drop_database(node, name)
                except (OSError, asyncpg.PostgresError) as exc:
                    logger.warning("could not drop database %s on %s: %s", name, node, exc)

    async def describe(self) -> dict[str, Any]:
        entry = await super().describe()
        conn = await asyncpg.connect(self.admin_url)
        try:
            entry["citus"] = await conn.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'citus'"
            )
        finally:
            await conn.close()
        entry["nodes"] = {}
        for node in self.nodes:
            conn = await asyncpg.connect(node)
            try:
                port = int(await conn.fetchval("SHOW port"))
                entry["nodes"][str(port)] = {
                    n: str(await conn.fetchval(f"SHOW {n}")) for n in DURABILITY
                }
            finally:
                await conn.close()
        return entry

    async def wal_inserted(self, url: str) -> int:
        """Summed over every node (each node's WAL is its own)."""
        return sum([await target.wal_position(node) for node in self.nodes])

    async def checkpoint(self, url: str) -> None:
        for node in self.nodes:
            await target.checkpoint(node)

    async def wal_files(self, url: str) -> str:
        return "not read on Citus (one node's WAL of several): the total is summed over the nodes"

    async def node_postmasters(self) -> dict[str, int]:
        assert self.cluster is not None
        found: dict[str, int] = {}
        for (_host, port), node in zip(self.cluster.workers, self.cluster.worker_urls, strict=True):
            pid = await target.postmaster_of(node)
            if pid is not None:
                found[f"{NODE_PREFIX}{port}"] = pid
        return found


def citus_target(cluster: Cluster, stamp: str) -> CitusTarget:
    host, port = cluster.coordinator
    label = f"Citus at {host}:{port} (coordinator and {len(cluster.workers)} workers)"
    name = f"orderly_bench_citus_{stamp.lower()}_{os.getpid()}"
    return CitusTarget("citus", cluster.url, label, name, drop_after=True, cluster=cluster)
