"""Fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), a fresh database per test made
from a migrated template, and the app served on a loopback port.

On a Citus cluster (TEST_CITUS_URL, set by `make test-citus`: the coordinator's URL, database
postgres, where the workers are registered), ``CREATE DATABASE ... TEMPLATE`` would not copy a
distribution: the session makes one database on every node (as `cluster.sh db` does), migrates
it once (which distributes it) and empties it before each test. The tests left out there are
named in CITUS_LEFT_OUT, with why."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from server.db import connect
from server.migrate import migrate
from tests.citus_cluster import (
    CITUS_URL,
    create_citus_database,
    drop_citus_database,
    nodes_can_stop,
    with_database,
)
from tests.faults.proxy import FaultProxy
from tests.processes import ServerProcess, Spawn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import EmbeddedPostgres, free_port


# The only list of tests that do not run on Citus (`make test-citus`), each with the reason.
CITUS_LEFT_OUT = {
    "tests/integration/test_fuzz.py": "clones a migrated template database per example: on Citus "
    "TEMPLATE does not copy a distribution, and a cluster database per example is too slow",
    "tests/browser/": "the browser tests check the pages, not the database; they run in the two "
    "other runs",
    "tests/integration/test_bench_smoke.py": "the benchmark's smoke test uses the machine's "
    "PostgreSQL and pgbench on it, whatever the run",
    "tests/integration/test_bench_pace_client.py": "the benchmark's pace client, database-free "
    "past its set-up; it runs in the two other runs",
    "tests/integration/test_lock_order.py::test_an_interrupt_that_cannot_cancel_the_running_answers"
    "_is_not_a_success": "it ends the waiting backend by the lock holder's transaction id; on "
    "Citus the wait is on a worker node, under an id of that node's (the 503 it checks is the "
    "same code on both layouts)",
}
# The tests that stop and start the cluster's nodes (the fault seed restarts the coordinator; the
# node test stops a worker node) need a local cluster's folder: a cluster given by CITUS_URL alone
# (tests/citus.sh did not start it) does not let them.
if not nodes_can_stop():
    for _stopping in ("tests/faults/test_under_faults.py", "tests/integration/test_citus_node.py"):
        CITUS_LEFT_OUT[_stopping] = (
            "stops and starts the cluster's nodes, which only a cluster that tests/citus.sh "
            "started itself lets it do (CITUS_URL names one it cannot stop)"
        )
# Every table, emptied between tests on Citus (reference and distributed tables alike).
_TABLES = "users, api_tokens, workers, user_running, projects, messages, event_chunks"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CITUS_URL is None:
        return
    for item in items:
        for prefix, reason in CITUS_LEFT_OUT.items():
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.skip(reason=f"left out on Citus: {reason}"))


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("TEST_DATABASE_URL") or CITUS_URL:
        yield None
        return
    # Not under pytest's tmp_path: pytest deletes old base temp directories when another session
    # starts, which would pull the data directory from under a server still running.
    data = Path(tempfile.mkdtemp(prefix="orderly-test-pg-"))
    server = EmbeddedPostgres(data / "data", free_port(), durable=False)
    server.start()
    yield server
    server.stop("immediate")
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_url(embedded_postgres: EmbeddedPostgres | None) -> str:
    if CITUS_URL:
        return CITUS_URL
    if embedded_postgres is None:
        return os.environ["TEST_DATABASE_URL"]
    return embedded_postgres.url


@pytest.fixture(scope="session")
async def template_name(admin_url: str) -> AsyncIterator[str | None]:
    if CITUS_URL:  # (no template there: citus_database)
        yield None
        return
    name = f"orderly_template_{os.getpid()}"
    async with connect(admin_url) as session:
        await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}"')
        await session.execute_sql(f'CREATE DATABASE "{name}"')
    async with connect(with_database(admin_url, name)) as session:
        await migrate(session)
    yield name
    async with connect(admin_url) as session:
        await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_database_url(admin_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (migration tests); on Citus, one with citus on
    every node and the workers registered, as `cluster.sh db` makes them."""
    name = f"orderly_test_{uuid.uuid4().hex[:12]}"
    if CITUS_URL:
        yield await create_citus_database(name)
        await drop_citus_database(name)
        return
    async with connect(admin_url) as session:
        await session.execute_sql(f'CREATE DATABASE "{name}"')
    yield with_database(admin_url, name)
    await _drop(admin_url, name)


@pytest.fixture(scope="session")
async def citus_database() -> AsyncIterator[str | None]:
    """The cluster's test database, migrated (and so distributed) once per session."""
    if not CITUS_URL:
        yield None
        return
    name = f"orderly_test_{os.getpid()}"
    await drop_citus_database(name)
    url = await create_citus_database(name)
    async with connect(url) as session:
        await migrate(session)
    yield url
    await drop_citus_database(name)


@pytest.fixture
async def database_url(
    admin_url: str, template_name: str | None, citus_database: str | None
) -> AsyncIterator[str]:
    """A fresh, migrated database for one test (on Citus: the session's, emptied)."""
    if citus_database is not None:
        async with connect(citus_database) as session:
            await session.execute_sql(f"TRUNCATE {_TABLES} CASCADE")
        yield citus_database
        return
    name = f"orderly_test_{uuid.uuid4().hex[:12]}"
    async with connect(admin_url) as session:
        await session.execute_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    yield with_database(admin_url, name)
    await _drop(admin_url, name)


async def _drop(admin_url: str, name: str) -> None:
    for _ in range(3):
        try:
            async with connect(admin_url) as session:
                await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except Exception:
            await asyncio.sleep(0.5)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(name, database_url, **settings)``: a server process, not started; always killed,
    and the end of its log printed (pytest shows it when the test fails)."""
    started: list[ServerProcess] = []

    def make(name: str, database_url: str, **settings: object) -> ServerProcess:
        env = {key.upper(): str(value) for key, value in settings.items()}
        proc = ServerProcess(name, database_url, free_port(), tmp_path / f"{name}.log", env)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.close()
        print(f"----- log of {proc.name} (last 6000 characters) -----\n{proc.log_tail(6000)}")


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy (tests/faults/proxy.py) in front of the test's PostgreSQL, seed 1:
    ``proxy.url_for(database_url)`` reaches the test's database through it."""
    port = urlsplit(database_url).port
    assert port is not None
    async with FaultProxy(port, seed=1) as running:
        yield running
