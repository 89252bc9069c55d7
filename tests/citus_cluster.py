"""The Citus cluster of ``make test-citus`` (``tests/citus.sh``), as the tests see it.

``TEST_CITUS_URL``: the coordinator (database ``postgres``, its workers registered). When
``tests/citus.sh`` starts a local cluster itself, it also exports ``TEST_CITUS_DIR`` (the
cluster's folder) and ``TEST_CITUS_SHARED`` (the Citus tooling beside the clone, its
``cluster.sh``): the tests that stop and start nodes need them, and are left out without them
(``CITUS_LEFT_OUT`` in ``tests/conftest.py``).

``CREATE DATABASE ... TEMPLATE`` does not copy a distribution, so a test database on Citus is made
on every node, with citus in it and the workers registered (``create_citus_database``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from server.db import Session, connect

CITUS_URL = os.environ.get("TEST_CITUS_URL")
CITUS_DIR = os.environ.get("TEST_CITUS_DIR")
CITUS_SHARED = os.environ.get("TEST_CITUS_SHARED")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name`` (its query string kept)."""
    base, _, rest = url.rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{name}" + (f"?{query}" if query else "")


def nodes_can_stop() -> bool:
    """Whether this run may stop and start the cluster's nodes (a local cluster)."""
    return bool(CITUS_URL and CITUS_DIR and CITUS_SHARED)


async def create_citus_database(name: str) -> str:
    """A database ``name`` on every node of the cluster, citus in it, the workers registered."""
    assert CITUS_URL is not None
    for url in [CITUS_URL, *await citus_workers()]:
        async with connect(url) as session:
            await session.execute_sql(f'CREATE DATABASE "{name}"')
        async with connect(with_database(url, name)) as session:
            await session.execute_sql("CREATE EXTENSION citus")
    async with connect(with_database(CITUS_URL, name)) as session:
        await _register_workers(session, CITUS_URL)
    return with_database(CITUS_URL, name)


async def drop_citus_database(name: str) -> None:
    assert CITUS_URL is not None
    for url in [CITUS_URL, *await citus_workers()]:
        for _ in range(3):
            try:
                async with connect(url) as session:
                    await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except Exception:
                await asyncio.sleep(0.5)


async def citus_workers() -> list[str]:
    """The ``postgres`` database of each worker node of the cluster."""
    assert CITUS_URL is not None
    async with connect(CITUS_URL) as session:
        nodes: list[str] = await session.fetchval_sql(
            "SELECT array_agg(nodename || ':' || nodeport ORDER BY nodeport) FROM pg_dist_node"
            " WHERE groupid <> 0"
        )
    return [f"postgresql://postgres@{node}/postgres" for node in nodes]


async def _register_workers(session: Session, source: str) -> None:
    """Register, in a new database, the coordinator and the workers of ``source``'s."""
    async with connect(source) as known:
        coordinator = await known.fetchval_sql(
            "SELECT nodename || ':' || nodeport FROM pg_dist_node WHERE groupid = 0"
        )
        workers = await known.fetchval_sql(
            "SELECT array_agg(nodename || ':' || nodeport) FROM pg_dist_node WHERE groupid <> 0"
        )
    host, port = coordinator.rsplit(":", 1)
    await session.execute_sql("SELECT citus_set_coordinator_host($1, $2)", host, int(port))
    for node in workers:
        host, port = node.rsplit(":", 1)
        await session.execute_sql("SELECT citus_add_node($1, $2)", host, int(port))


class CitusNode:
    """One node of the local cluster, with what the fault suite asks of ``EmbeddedPostgres``
    (``port``, ``url``, ``is_running``, ``start``, ``stop(mode)``) and its ``log_path``."""

    def __init__(self, port: int) -> None:
        assert CITUS_DIR
        self.port = port
        self.data_dir = Path(CITUS_DIR) / str(port)
        self.log_path = self.data_dir / "log"  # where cluster.sh has it log

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def is_running(self) -> bool:
        return self._pg_ctl("status", check=False) == 0

    def start(self) -> str:
        if not self.is_running():
            self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path))
        return self.url

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def _pg_ctl(self, *args: str, check: bool = True) -> int:
        command = [str(PG_BIN / "pg_ctl"), *args, "-D", str(self.data_dir)]
        if os.geteuid() == 0:  # cluster.sh runs the servers as the OS user postgres
            command = ["su", "postgres", "-s", "/bin/sh", "-c", subprocess.list2cmdline(command)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)}: {done.stderr.strip()}")
        return done.returncode


def cluster_nodes() -> tuple[CitusNode, list[CitusNode]]:
    """The coordinator and the workers of the local cluster."""
    assert CITUS_DIR
    port, workers = (Path(CITUS_DIR) / "ports").read_text().split()
    first = int(port)
    return CitusNode(first), [CitusNode(first + i) for i in range(1, int(workers) + 1)]
