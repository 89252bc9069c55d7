"""What PostgreSQL's backends are doing during a measured window, sampled from
``pg_stat_activity``: each active backend of the service's database (and PostgreSQL's own
processes: autovacuum, the checkpointer, ...) as the statement it runs, named from
``sql/queries.sql``, and what it waits for, or ``CPU`` when it waits for nothing.

A count divided by the number of samples is the average number of backends in that state over
the window: a tail in a latency can then be put on a lock, an I/O or a background process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

_QUERY = """
SELECT a.backend_type, a.wait_event_type, a.wait_event, left(a.query, 200) AS query
FROM pg_stat_activity AS a
WHERE a.pid <> pg_backend_pid()
  AND ((a.backend_type = 'client backend' AND a.state = 'active' AND a.datname = $1)
       OR (a.backend_type <> 'client backend' AND a.wait_event_type IS DISTINCT FROM 'Activity'))
"""


def statement_names(queries: Path) -> list[tuple[str, str]]:
    """(the start of a statement's text as the server sends it, its name) for every named
    statement of the server's query file."""
    names: list[tuple[str, str]] = []
    for block in re.split(r"^-- name: ", queries.read_text(), flags=re.M)[1:]:
        name, _, text = block.partition("\n")
        names.append((_squash(text)[:60], name.strip()))
    return names


def _squash(text: str) -> str:
    return " ".join(text.split())


def _label(row: asyncpg.Record, names: list[tuple[str, str]]) -> str:
    if row["backend_type"] != "client backend":
        what = row["backend_type"]
        if row["query"] and row["backend_type"].startswith("autovacuum"):
            what = _squash(row["query"])[:60]
    else:
        text = _squash(row["query"] or "")
        what = next((name for start, name in names if start and text.startswith(start)), "")
        what = what or (text[:40] + ("..." if len(text) > 40 else ""))
    wait = f"{row['wait_event_type']}: {row['wait_event']}" if row["wait_event_type"] else "CPU"
    return f"{what} | {wait}"


class WaitSampler:
    """Samples every ``interval`` seconds between ``start`` and ``stop``."""

    def __init__(self, url: str, database: str, queries: Path, interval: float = 0.01) -> None:
        self.url = url
        self.database = database
        self.names = statement_names(queries)
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        conn = await asyncpg.connect(self.url)
        self._task = asyncio.create_task(self._run(conn))

    async def _run(self, conn: asyncpg.Connection) -> None:
        try:
            while not self._stop.is_set():
                for row in await conn.fetch(_QUERY, self.database):
                    self.counts[_label(row, self.names)] += 1
                self.samples += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
        finally:
            await conn.close()

    async def stop(self, top: int = 10) -> dict[str, Any]:
        self._stop.set()
        if self._task is not None:
            await self._task
        n = max(1, self.samples)
        return {
            "samples": self.samples,
            "interval_s": self.interval,
            "top": [
                {"what": what, "backends": round(count / n, 4)}
                for what, count in self.counts.most_common(top)
            ],
        }
