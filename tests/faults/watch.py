"""What the database says while the run goes on: each user's running count against their
running answers, which worker identity belongs to which process, and how long queued answers
wait once their turn has come.

``user_running.running_generations`` is changed by the very statements that reserve and end answers
(sql/queries.sql), so in any one snapshot it equals the number of the user's assistant messages
that are ``pending`` or ``streaming``, exactly. Comparing the two only at the end cannot catch a
double decrement: the SQL clamps the count at 0, so once nothing runs an extra decrement has left
no trace. Compared in one statement, again and again while answers still run (during the faults,
while they heal, and after), an extra decrement shows as a count below the answers running
beside it, and an extra increment as a count above them.

The watcher reads PostgreSQL directly, not through the fault proxy; while PostgreSQL is stopped
it just waits. It also collects which worker identity held each running answer
(``lease_owner``) and which process each identity is (``workers.pid``), as they come: the
reaper clears an ended answer's ``lease_owner`` and an expired heartbeat's row is deleted once
it leads nothing, and the interrupted check needs to know, later, whose answer it was. And it
notes each queued answer whose turn has come (no earlier answer of its project runs) while no
worker has taken it: a notification lost in a fault leaves it to the queue's poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import asyncpg

SAMPLE_EVERY = 0.2  # seconds between snapshots: a sampling rate, not a bound

# Queued answers whose turn has come (no earlier answer of the project runs) and that no worker
# has taken yet.
TURN_CAME = """
SELECT q.id::text AS id FROM messages AS q
WHERE q.role = 'assistant' AND q.status = 'pending' AND q.lease_owner IS NULL
  AND q.queued_at IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM messages AS e
      WHERE e.created_by = q.created_by AND e.project_id = q.project_id
        AND e.sequence < q.sequence AND e.role = 'assistant'
        AND e.status IN ('pending', 'streaming'))
"""

# Per user, the count and the running answers; written so that Citus runs it shard by shard (a
# user's count and messages share a shard, so each user's two figures come from one snapshot
# there too: a multi-shard statement reads each shard at its own moment).
COUNTS = """
SELECT u.username, x.counted, x.running
FROM (SELECT coalesce(r.user_id, m.created_by) AS user_id,
             coalesce(r.running_generations, 0) AS counted, coalesce(m.running, 0) AS running
      FROM user_running AS r
      FULL JOIN (SELECT created_by, count(*) AS running FROM messages
                 WHERE role = 'assistant' AND status IN ('pending', 'streaming')
                 GROUP BY created_by) AS m ON m.created_by = r.user_id) AS x
JOIN users AS u ON u.id = x.user_id
ORDER BY u.username
"""


@dataclass(frozen=True, slots=True)
class Count:
    user: str
    counted: int  # user_running.running_generations
    running: int  # the user's running (or queued) answers, in the same snapshot

    def __str__(self) -> str:
        return f"user {self.user}: running_generations = {self.counted}, {self.running} running"


async def counts(database_url: str) -> list[Count]:
    """One snapshot (one statement) of every user's count and running answers."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        records = await conn.fetch(COUNTS)
    finally:
        await conn.close()
    return [Count(r["username"], r["counted"], r["running"]) for r in records]


def check_counts(found: list[Count], when: str, *, all_ended: bool) -> list[str]:
    """Each user's count equals their running answers; and is 0 once everything has ended."""
    problems = [f"{when}: {c}" for c in found if c.counted != c.running]
    if all_ended:
        problems += [f"{when}: {c}, though nothing runs" for c in found if c.counted]
    return problems


@dataclass
class Watcher:
    """Samples until stopped; ``mismatches`` keeps every snapshot where a count was wrong."""

    database_url: str
    began: float  # the run's start, time.monotonic()
    mismatches: list[tuple[float, Count]] = field(default_factory=list)
    samples: int = 0
    workers: dict[str, int] = field(default_factory=dict)  # workers.id -> pid
    owners: dict[str, set[str]] = field(default_factory=dict)  # message id -> its lease_owners
    # Queued answers whose turn had come, untaken: (first, last) snapshot, seconds of the run.
    waiting: dict[str, tuple[float, float]] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while not self._stop.is_set():
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.database_url, timeout=5)
                    await self._sample(conn)
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    TimeoutError,
                ) as exc:
                    if not _unreachable(exc):
                        raise  # a mistake of the watcher's own: a check that never ran
                    if conn is not None:
                        conn.terminate()
                    conn = None  # PostgreSQL is stopped or restarting: try again later
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SAMPLE_EVERY)
        finally:
            if conn is not None:
                conn.terminate()

    async def sample_once(self) -> None:
        """One snapshot on a connection of its own (for the watcher's own tests)."""
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            await self._sample(conn)
        finally:
            await conn.close()

    async def _sample(self, conn: asyncpg.Connection) -> None:
        records = await conn.fetch(COUNTS)
        at = time.monotonic() - self.began
        self.samples += 1
        for r in records:
            count = Count(r["username"], r["counted"], r["running"])
            if count.counted != count.running:
                self.mismatches.append((at, count))
        for r in await conn.fetch("SELECT id::text AS id, pid FROM workers"):
            self.workers[r["id"]] = r["pid"]
        for r in await conn.fetch(
            "SELECT id::text AS id, lease_owner::text AS owner FROM messages "
            "WHERE status IN ('pending', 'streaming') AND lease_owner IS NOT NULL"
        ):
            self.owners.setdefault(r["id"], set()).add(r["owner"])
        for r in await conn.fetch(TURN_CAME):
            first, _ = self.waiting.get(r["id"], (at, at))
            self.waiting[r["id"]] = (first, at)

    def pids_of(self, message_id: str) -> set[int]:
        """The processes seen holding the message (none, if it ran between two snapshots)."""
        return {
            self.workers[owner]
            for owner in self.owners.get(message_id, ())
            if owner in self.workers
        }

    def starved(self, longer_than: float) -> list[str]:
        """Queued answers that waited, their turn come, longer than ``longer_than`` seconds."""
        return [
            f"queued answer {message}: its turn had come and no worker took it from {first:.1f}s"
            f" to {last:.1f}s of the run ({last - first:.1f}s, more than {longer_than:g}s)"
            for message, (first, last) in self.waiting.items()
            if last - first > longer_than
        ]

    def stop(self) -> None:
        self._stop.set()

    def violations(self) -> list[str]:
        """One sentence per user whose count was ever wrong: the first snapshot, and how many
        (and one if the watcher never read the database: its checks would have passed blind)."""
        if not self.samples:
            return ["the watcher never read the database"]
        first: dict[str, tuple[float, Count]] = {}
        times: dict[str, int] = {}
        for at, count in self.mismatches:
            first.setdefault(count.user, (at, count))
            times[count.user] = times.get(count.user, 0) + 1
        return [
            f"running count wrong in {times[user]} of {self.samples} snapshots, first at "
            f"{at:.2f}s: {count}"
            for user, (at, count) in first.items()
        ]


def _unreachable(exc: BaseException) -> bool:
    """PostgreSQL is away (stopped, starting, shutting down, the connection gone), as opposed
    to a statement of the watcher's that is wrong."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(("08", "57"))
    return True
