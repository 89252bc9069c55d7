"""The migration runner: numbered SQL files, applied in order, once each, under an advisory lock.

Several workers (or hosts) starting at once all call ``migrate``; the advisory lock makes the
first one apply what is missing and the others wait, then find nothing left to do.

On a database with the ``citus`` extension, every run then distributes the tables that are not
distributed yet (``orderly_distribute()``, ``sql/migrations/0010_citus_layout.sql``): so the first
run lays them out, a second changes nothing, and installing Citus into a database migrated without
it and running ``migrate`` again moves its data onto the shards. Then it makes the functions by
which Citus runs the hot path's statements whole on one node (``server/citus.py``), or remakes
those whose statement changed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from server.citus import delegate
from server.db import Session, load_queries
from server.resources import SQL_DIR

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = SQL_DIR / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
# An arbitrary constant that names "the Orderly schema" among advisory locks.
ADVISORY_LOCK_KEY = 0x0_0D_E7_17


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


async def applied_versions(session: Session) -> set[int]:
    await session.execute_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    rows = await session.fetchval_sql(
        "SELECT coalesce(array_agg(version), '{}') FROM schema_migrations"
    )
    return set(rows)


async def migrate(session: Session, *, to: int | None = None) -> list[Migration]:
    """Apply every pending migration up to version ``to`` (all by default); return them."""
    migrations = [m for m in discover() if to is None or m.version <= to]
    await session.execute_sql("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        done = await applied_versions(session)
        pending = [m for m in migrations if m.version not in done]
        for migration in pending:
            async with session.transaction():
                await session.execute_sql(migration.path.read_text())
                await session.execute_sql(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            logger.info("applied migration %04d_%s", migration.version, migration.name)
        if await session.fetchval_sql("SELECT to_regprocedure('orderly_distribute()') IS NOT NULL"):
            async with session.transaction():
                await session.execute_sql("SELECT orderly_distribute()")
        if (
            await session.fetchval_sql(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
            )
            and to is None
        ):
            for statement in await delegate(
                session, load_queries(), load_queries(SQL_DIR / "citus.sql")
            ):
                logger.info("made the delegated function of %s (Citus)", statement)
        return pending
    finally:
        await session.execute_sql("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
