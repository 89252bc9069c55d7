"""The benchmark's own PostgreSQL: a fresh embedded cluster in a temporary directory, its
databases, the users, tokens and projects of the scenarios, and the checks run afterwards.

Ids are derived from small numbers so that pgbench scripts can compute the same ids in SQL:
user ``n`` is ``UUID(int=n)``, its project ``n`` is ``UUID(int=2**124 + n)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg

from server.auth import hash_token
from server.config import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the wheel warns about XDG_RUNTIME_DIR on import
    from server.embedded import BIN, EmbeddedPostgres, free_port

SETTING_NAMES = {f.name.upper() for f in dataclasses.fields(Settings)}
PROJECT_BASE = 1 << 124
# SQL that computes the same ids from an integer (used by the pgbench scripts).
SQL_USER_ID = "lpad(to_hex({n}), 32, '0')::uuid"
SQL_PROJECT_ID = "('1' || lpad(to_hex({n}), 31, '0'))::uuid"


def user_id(n: int) -> UUID:
    return UUID(int=n)


def project_id(n: int) -> UUID:
    return UUID(int=PROJECT_BASE + n)


def token_for(n: int) -> str:
    return f"ord_bench_{n:06d}_{'x' * 32}"


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@dataclass
class Cluster:
    """One embedded PostgreSQL started for this run."""

    server: EmbeddedPostgres
    durable: bool
    version: str = ""

    @classmethod
    def start(cls, directory: Path, *, durable: bool) -> Cluster:
        server = EmbeddedPostgres(directory / "pgdata", free_port(), durable=durable)
        server.start()
        return cls(server, durable)

    @property
    def admin_url(self) -> str:
        return self.server.url

    @property
    def bin_dir(self) -> Path:
        return Path(BIN)

    @property
    def postmaster_pid(self) -> int:
        return int((self.server.data_dir / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        self.server.stop("immediate")

    async def create(self, name: str, source: Path) -> str:
        """A new database migrated by ``python -m server migrate`` run in ``source`` (the run's
        snapshot of the server code); returns its URL."""
        if not self.version:
            self.version = await server_version(self.admin_url)
        return await create_database(self.admin_url, name, source)

    async def settings(self) -> dict[str, str]:
        names = ("fsync", "synchronous_commit", "shared_buffers", "max_connections", "wal_level")
        conn = await asyncpg.connect(self.admin_url)
        try:
            return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
        finally:
            await conn.close()


async def server_version(admin_url: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def create_database(admin_url: str, name: str, source: Path) -> str:
    """Create database ``name`` (dropping one of that name first) on the server of
    ``admin_url`` and migrate it by ``python -m server migrate`` run in ``source``; its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    await migrate(url, source, name)
    return url


async def migrate(url: str, source: Path, name: str) -> None:
    """``python -m server migrate`` run in ``source`` on the database of ``url`` (on a database
    with the citus extension it also distributes the tables)."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "migrate",
        cwd=source,
        env={**env, "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0:
        raise RuntimeError(f"migrating {name} failed:\n{out.decode(errors='replace')}")


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, closing whatever sessions are still connected to it."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def seed(url: str, numbers: Iterable[int]) -> dict[int, str]:
    """User ``n``, its token and its project ``n`` for each number; returns ``{n: token}``."""
    numbers = list(numbers)
    tokens = {n: token_for(n) for n in numbers}
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO users (id, username) VALUES ($1, $2)",
                [(user_id(n), f"bench-{n}") for n in numbers],
            )
            await conn.executemany(
                "INSERT INTO api_tokens (user_id, token_hash) VALUES ($1, $2)",
                [(user_id(n), hash_token(tokens[n])) for n in numbers],
            )
            await conn.executemany(
                "INSERT INTO projects (id, owner_id, title) VALUES ($1, $2, $3)",
                [(project_id(n), user_id(n), f"bench project {n}") for n in numbers],
            )
    finally:
        await conn.close()
    return tokens


async def load_history(url: str, n: int, count: int, content_chars: int = 200) -> float:
    """Give project ``n`` ``count`` finished messages (pairs of user and assistant), by SQL;
    returns the seconds it took. The rows satisfy every constraint of sql/migrations/."""
    import time

    started = time.perf_counter()
    conn = await asyncpg.connect(url, command_timeout=600)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO messages (project_id, sequence, role, kind, content, status,
                                      created_by, created_at, updated_at, last_event_id)
                SELECT $1::uuid, g,
                       CASE WHEN g % 2 = 1 THEN 'user' ELSE 'assistant' END, 'message',
                       left(repeat('message ' || g || ' ', 50), $4),
                       'success', $2::uuid,
                       now() - (($3 - g) * interval '1 second'),
                       now() - (($3 - g) * interval '1 second'),
                       CASE WHEN g % 2 = 1 THEN 0 ELSE 12 END
                FROM generate_series(1, $3::bigint) AS g
                """,
                project_id(n),
                user_id(n),
                count,
                content_chars,
            )
            await conn.execute(
                "UPDATE projects SET last_sequence = $2 WHERE id = $1", project_id(n), count
            )
        await conn.execute("ANALYZE messages")
        await conn.execute("ANALYZE projects")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def check_sequences(url: str, numbers: Iterable[int]) -> dict[str, object]:
    """Invariant 1 and 2 over the given projects: sequences exactly 1..last_sequence, users odd,
    assistants even, and no assistant message left unfinished."""
    ids = [project_id(n) for n in numbers]
    conn = await asyncpg.connect(url, command_timeout=600)
    try:
        row = await conn.fetchrow(
            """
            WITH per AS (
                SELECT p.id, p.last_sequence,
                       count(m.sequence) AS n, count(DISTINCT m.sequence) AS distinct_n,
                       coalesce(min(m.sequence), 1) AS lo, coalesce(max(m.sequence), 0) AS hi,
                       count(*) FILTER (WHERE (m.sequence % 2 = 1) <> (m.role = 'user')) AS bad_role
                FROM projects AS p  -- (joined on the owner too: Citus's distribution column)
                LEFT JOIN messages AS m ON m.created_by = p.owner_id AND m.project_id = p.id
                WHERE p.id = ANY($1::uuid[])
                GROUP BY p.id, p.last_sequence
            )
            SELECT count(*) AS projects,
                   coalesce(sum(n), 0) AS messages,
                   count(*) FILTER (WHERE n <> distinct_n) AS with_duplicates,
                   count(*) FILTER (WHERE n <> hi OR lo <> 1 OR hi <> last_sequence)
                       AS with_gaps,
                   coalesce(sum(bad_role), 0) AS wrong_roles
            FROM per
            """,
            ids,
        )
        unfinished = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE project_id = ANY($1::uuid[])"
            " AND role = 'assistant' AND status NOT IN ('success', 'error', 'cancelled')",
            ids,
        )
        statuses = await conn.fetch(
            "SELECT status, count(*) AS n FROM messages WHERE project_id = ANY($1::uuid[])"
            " AND role = 'assistant' GROUP BY status ORDER BY status",
            ids,
        )
    finally:
        await conn.close()
    assert row is not None
    result: dict[str, object] = {k: int(v) for k, v in dict(row).items()}
    result["unfinished"] = int(unfinished)
    result["assistant_statuses"] = {r["status"]: int(r["n"]) for r in statuses}
    result["ok"] = (
        result["with_duplicates"] == 0 and result["with_gaps"] == 0 and result["wrong_roles"] == 0
    )
    return result
