"""Fixtures of the fault-injection suite: the seeds, a PostgreSQL of its own, server processes.

Seeds: ``FAULT_SEED=N`` runs that one seed; ``FAULT_SEEDS="N M ..."`` those; ``SOAK_SEEDS=K``
runs K seeds from ``SOAK_FIRST_SEED`` (random when unset); otherwise ``CI_SEEDS``.
``FAULT_SECONDS`` sets how long the faults last (default ``DEFAULT_WINDOW``). A seed and a window
fix the fault schedule and the client script.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server.db import connect
from server.migrate import migrate
from tests.citus_cluster import (
    CITUS_URL,
    CitusNode,
    citus_workers,
    cluster_nodes,
    create_citus_database,
    drop_citus_database,
    with_database,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import EmbeddedPostgres, free_port

CI_SEEDS = (1, 2, 3)
# On Citus (`make test-citus`) one seed, through the proxy in front of the coordinator: seed 1's
# schedule has every kind of fault, the coordinator's restart included.
CITUS_SEEDS = (1,)
DEFAULT_WINDOW = 20.0


def chosen_seeds() -> list[int]:
    if one := os.environ.get("FAULT_SEED"):
        return [int(one)]
    if several := os.environ.get("FAULT_SEEDS"):
        return [int(seed) for seed in several.replace(",", " ").split()]
    if count := os.environ.get("SOAK_SEEDS"):
        first = os.environ.get("SOAK_FIRST_SEED") or str(random.SystemRandom().randrange(10**6))
        return list(range(int(first), int(first) + int(count)))
    return list(CITUS_SEEDS if CITUS_URL else CI_SEEDS)


def fault_window() -> float:
    return float(os.environ.get("FAULT_SECONDS") or DEFAULT_WINDOW)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fault_seed" in metafunc.fixturenames:
        seeds = chosen_seeds()
        metafunc.parametrize("fault_seed", seeds, ids=[f"seed={seed}" for seed in seeds])


@pytest.fixture(scope="module")
def fault_postgres() -> Iterator[EmbeddedPostgres | CitusNode]:
    """A PostgreSQL the suite may stop and start, whatever TEST_DATABASE_URL says; outside
    pytest's temporary directory (see test_survival's ``own_postgres`` for why). On Citus, the
    local cluster's coordinator (the proxy stands in front of it; it restarts as a single
    PostgreSQL does)."""
    if CITUS_URL:
        coordinator, _ = cluster_nodes()
        yield coordinator
        coordinator.start()
        return
    data_dir = Path(tempfile.mkdtemp(prefix="orderly-faults-"))
    server = EmbeddedPostgres(data_dir / "pg", free_port(), durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def postgres_logs(fault_postgres: EmbeddedPostgres | CitusNode) -> list[Path]:
    """The server logs in which the run looks for deadlocks: on Citus, every node's."""
    if isinstance(fault_postgres, CitusNode):
        coordinator, workers = cluster_nodes()
        return [node.log_path for node in (coordinator, *workers)]
    return [fault_postgres.data_dir / "server.log"]


@pytest.fixture
async def fault_database(fault_postgres: EmbeddedPostgres | CitusNode) -> AsyncIterator[str]:
    """A fresh, migrated database on ``fault_postgres``; its name is the URL's last part."""
    fault_postgres.start()  # running already, unless an earlier run died with it stopped
    name = f"orderly_faults_{uuid.uuid4().hex[:12]}"
    # The schedule's immediate shutdown is a crash. With synchronous_commit off (the test
    # cluster's setting) a crash loses commits acknowledged in its last moments, which a
    # production database does not: commits wait for their WAL write here. (fsync stays off: the
    # operating system does not crash.)
    synchronous = f'ALTER DATABASE "{name}" SET synchronous_commit = on'
    if CITUS_URL:
        url = await create_citus_database(name)
        for node in [CITUS_URL, *await citus_workers()]:
            async with connect(node) as session:
                await session.execute_sql(synchronous)
    else:
        async with connect(fault_postgres.url) as session:
            await session.execute_sql(f'CREATE DATABASE "{name}"')
            await session.execute_sql(synchronous)
        url = with_database(fault_postgres.url, name)
    async with connect(url) as session:
        await migrate(session)
    yield url
    fault_postgres.start()
    if CITUS_URL:
        await drop_citus_database(name)
        return
    async with connect(fault_postgres.url) as session:
        await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
