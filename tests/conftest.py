"""Fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), a fresh database per test made
from a migrated template, and the app served on a loopback port."""

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
from tests.faults.proxy import FaultProxy
from tests.processes import ServerProcess, Spawn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import EmbeddedPostgres, free_port


def _with_database(url: str, name: str) -> str:
    base, _, rest = url.rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("TEST_DATABASE_URL"):
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
    if embedded_postgres is None:
        return os.environ["TEST_DATABASE_URL"]
    return embedded_postgres.url


@pytest.fixture(scope="session")
async def template_name(admin_url: str) -> AsyncIterator[str]:
    name = f"orderly_template_{os.getpid()}"
    async with connect(admin_url) as session:
        await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}"')
        await session.execute_sql(f'CREATE DATABASE "{name}"')
    async with connect(_with_database(admin_url, name)) as session:
        await migrate(session)
    yield name
    async with connect(admin_url) as session:
        await session.execute_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_database_url(admin_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (migration tests)."""
    name = f"orderly_test_{uuid.uuid4().hex[:12]}"
    async with connect(admin_url) as session:
        await session.execute_sql(f'CREATE DATABASE "{name}"')
    yield _with_database(admin_url, name)
    await _drop(admin_url, name)


@pytest.fixture
async def database_url(admin_url: str, template_name: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"orderly_test_{uuid.uuid4().hex[:12]}"
    async with connect(admin_url) as session:
        await session.execute_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    yield _with_database(admin_url, name)
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
