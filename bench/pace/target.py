"""Where the model-pace scenario's data lives: the run's embedded PostgreSQL (tuned like the
tests), or an external PostgreSQL given by URL (the machine's, durable). Each build gets a fresh
database on it, migrated by that build's own ``python -m server migrate``; the external ones are
dropped afterwards. Also what the scenario reads from the server itself: its settings, its
postmaster (whose process tree's CPU is measured) and its WAL position."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench import database
from bench.pace import waldump

logger = logging.getLogger("bench")
AUTO_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SETTINGS = (
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "checkpoint_timeout",
    "max_wal_size",
    "max_connections",
)


@dataclass
class Target:
    key: str  # "embedded" or "external"
    admin_url: str
    label: str
    prefix: str  # of the names of the databases made here
    drop_after: bool
    created: list[str] = field(default_factory=list)

    async def create(self, build: str, source: Path) -> str:
        """A fresh database for ``build``, migrated by the code in ``source``; its URL."""
        name = f"{self.prefix}_{build}"
        url = await database.create_database(self.admin_url, name, source)
        self.created.append(name)
        return url

    async def drop(self) -> None:
        """Drop the databases made here (only on an external server: the embedded cluster
        goes with the run's work directory)."""
        while self.drop_after and self.created:
            name = self.created.pop()
            try:
                await database.drop_database(self.admin_url, name)
            except (OSError, asyncpg.PostgresError) as exc:
                logger.warning("could not drop database %s: %s", name, exc)

    async def describe(self) -> dict[str, Any]:
        """The server's version and the settings that decide the cost of a write."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            version = str(await conn.fetchval("SHOW server_version"))
            settings = {n: str(await conn.fetchval(f"SHOW {n}")) for n in SETTINGS}
        finally:
            await conn.close()
        return {"label": self.label, "version": version, "settings": settings}

    async def wal_inserted(self, url: str) -> int:
        """Bytes of WAL inserted so far where ``url``'s data lives (one server here; a Citus
        cluster sums its nodes)."""
        return await wal_position(url)

    async def checkpoint(self, url: str) -> None:
        """A checkpoint on every server that holds ``url``'s data."""
        await checkpoint(url)

    async def wal_files(self, url: str) -> waldump.WalFiles | str:
        """Where to read the WAL by kind of record, or why it cannot be read."""
        return await waldump.locate(url)

    async def node_postmasters(self) -> dict[str, int]:
        """Other servers whose CPU counts as the database's, by name (a Citus cluster's worker
        nodes; none here)."""
        return {}

    async def postmaster_pid(self) -> int | None:
        """The postmaster: the parent of one of its backends (this machine's servers only)."""
        return await postmaster_of(self.admin_url)


async def postmaster_of(url: str) -> int | None:
    """The postmaster of the server at ``url``: the parent of one of its backends, or the pid in
    its data directory (this machine's servers only)."""
    conn = await asyncpg.connect(url)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        data_dir = str(await conn.fetchval("SHOW data_directory"))
    finally:
        await conn.close()
    parent = _parent(backend)
    if parent is not None and _command(parent) in ("postgres", "postmaster"):
        return parent
    return _pid_file(Path(data_dir))


def external(url: str, stamp: str) -> Target:
    name = f"orderly_bench_{stamp.lower()}_{os.getpid()}"
    host = url.split("@", 1)[-1].split("/", 1)[0]
    return Target("external", url, f"external PostgreSQL at {host}", name, drop_after=True)


def embedded(admin_url: str) -> Target:
    return Target(
        "embedded", admin_url, "the run's embedded PostgreSQL", "model_pace", drop_after=False
    )


async def probe(url: str) -> str | None:
    """None when a PostgreSQL answers at ``url``, else why not."""
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def wal_position(url: str) -> int:
    """Bytes of WAL inserted since the cluster began (insert, not write, position: with
    asynchronous commit the last records may not be written yet)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))
    finally:
        await conn.close()


async def checkpoint(url: str) -> None:
    """A checkpoint before each step, so that every step pays the full-page images of the pages
    it touches first (where ``full_page_writes`` is on) the same way."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def backends(url: str) -> dict[str, Any]:
    """This database's backends (their pids) and how many backends of other databases are busy
    (another session's tests on a shared server)."""
    conn = await asyncpg.connect(url)
    try:
        ours = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        others = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname <> current_database()"
            " AND state = 'active' AND backend_type = 'client backend'"
        )
    finally:
        await conn.close()
    return {"pids": [int(r["pid"]) for r in ours], "other_active": int(others)}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pid_file(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return pid if _command(pid) in ("postgres", "postmaster") else None
