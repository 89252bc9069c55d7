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

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import EmbeddedPostgres, free_port

CI_SEEDS = (1, 2, 3)
DEFAULT_WINDOW = 20.0


def chosen_seeds() -> list[int]:
    if one := os.environ.get("FAULT_SEED"):
        return [int(one)]
    if several := os.environ.get("FAULT_SEEDS"):
        return [int(seed) for seed in several.replace(",", " ").split()]
    if count := os.environ.get("SOAK_SEEDS"):
        first = os.environ.get("SOAK_FIRST_SEED") or str(random.SystemRandom().randrange(10**6))
        return list(range(int(first), int(first) + int(count)))
    return list(CI_SEEDS)


def fault_window() -> float:
    return float(os.environ.get("FAULT_SECONDS") or DEFAULT_WINDOW)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fault_seed" in metafunc.fixturenames:
        seeds = chosen_seeds()
        metafunc.parametrize("fault_seed", seeds, ids=[f"seed={seed}" for seed in seeds])


@pytest.fixture(scope="module")
def fault_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL the suite may stop and start, whatever TEST_DATABASE_URL says; outside
    pytest's temporary directory (see test_survival's ``own_postgres`` for why)."""
    data_dir = Path(tempfile.mkdtemp(prefix="orderly-faults-"))
    server = EmbeddedPostgres(data_dir / "pg", free_port(), durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def fault_database(fault_postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, migrated database on ``fault_postgres``; its name is the URL's last part."""
    fault_postgres.start()  # running already, unless an earlier run died with it stopped
    name = f"orderly_faults_{uuid.uuid4().hex[:12]}"
    async with connect(fault_postgres.url) as session:
        await session.execute_sql(f'CREATE DATABASE "{name}"')
        # The schedule's immediate shutdown is a crash. With synchronous_commit off (the test
        # cluster's setting) a crash loses commits acknowledged in its last moments, which a
        # production database does not: commits wait for their WAL write here. (fsync stays
        # off: the operating system does not crash.)
        await session.execute_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
    url = fault_postgres.url.rsplit("/", 1)[0] + f"/{name}"
    async with connect(url) as session:
        await migrate(session)
    yield url
    fault_postgres.start()
    async with connect(fault_postgres.url) as session:
        await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
