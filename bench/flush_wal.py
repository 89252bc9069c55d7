"""``python -m bench.flush_wal URL [K ...]``: the WAL the flush statement writes per event.

The flush alone, without the service around it: N running answers, each given K new deltas (one
chunk) per flush, for F flushes, against the PostgreSQL server at URL (a database ``flush_wal``
is created on it and dropped). Prints the WAL per event and per answer byte, and, when
``pg_waldump`` and the server's pg_wal directory are at hand (a local server, run as a user that
may read it), the breakdown by record type: what docs/architecture.md's arithmetic comes from.
No CHECKPOINT is forced, so full-page images appear only where a checkpoint happens to fall.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg

from server.db import connect
from server.events import Chunk, Event, delta_data
from server.migrate import migrate
from server.store import FlushItem, Pair, Store

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "a",
    "model",
    "writes",
    "its",
    "answer",
]
WALDUMP_PATHS = ("/usr/lib/postgresql/15/bin/pg_waldump", "pg_waldump")


async def measure(url: str, k: int, *, answers: int, flushes: int) -> None:
    admin = url
    target = url.rsplit("/", 1)[0] + "/flush_wal"
    async with connect(admin) as session:
        await session.execute_sql("DROP DATABASE IF EXISTS flush_wal WITH (FORCE)")
        await session.execute_sql("CREATE DATABASE flush_wal")
    try:
        async with connect(target) as session:
            await migrate(session)
        async with Store.single(target) as store:
            await _run(store, target, k, answers=answers, flushes=flushes)
    finally:
        async with connect(admin) as session:
            await session.execute_sql("DROP DATABASE IF EXISTS flush_wal WITH (FORCE)")


async def _run(store: Store, url: str, k: int, *, answers: int, flushes: int) -> None:
    worker = uuid.uuid4()
    await store.register_worker(worker, 3600, "flush_wal", 0)
    user = await store.create_token("flush_wal", uuid.uuid4().bytes)
    pairs: list[Pair] = []
    for i in range(answers):
        project = await store.create_project(user, f"p{i}")
        reservation = await store.reserve_pair(
            project_id=project.id,
            owner_id=user,
            content="q",
            image_urls=[],
            client_request_id=None,
            lease_owner=worker,
            running_cap=10**9,
        )
        assert reservation is not None
        pairs.append(reservation.pair)
    next_id = {pair.assistant.message.id: 2 for pair in pairs}
    rng = random.Random(k)

    def batch(first: bool = False) -> tuple[list[FlushItem], int]:
        items, size = [], 0
        for pair in pairs:
            message = pair.assistant.message
            texts = [" " + rng.choice(WORDS)[:4] for _ in range(k)]
            size += sum(len(t.encode()) for t in texts)
            start = next_id[message.id]
            events = [Event(start + j, "delta", delta_data(t)) for j, t in enumerate(texts)]
            next_id[message.id] += k
            item = FlushItem(
                message.project_id,
                message.created_by,
                message.id,
                "streaming",
                None,
                start + k - 1,
                None,
                [Chunk.of(events)],
                changes_status=first,  # only the first flush moves them to `streaming`
            )
            items.append(item)
        return items, size

    await store.flush(worker, batch(first=True)[0])  # every answer to `streaming`
    for _ in range(4):  # not measured
        await store.flush(worker, batch()[0])
    conn = await asyncpg.connect(url)
    try:
        start = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        answer_bytes = 0
        for _ in range(flushes):
            items, size = batch()
            answer_bytes += size
            await store.flush(worker, items)
        end = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        wal = await conn.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", end, start
        )
        wal_dir = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    events = flushes * len(pairs) * k
    print(
        f"K={k}: {float(wal) / events:.0f} WAL bytes per event, "
        f"{float(wal) / answer_bytes:.1f} per answer byte ({events:,} events, {k} per row)"
    )
    _breakdown(Path(wal_dir) / "pg_wal", start, end)


def _breakdown(wal_dir: Path, start: str, end: str) -> None:
    tool = next((p for p in WALDUMP_PATHS if shutil.which(p) or Path(p).exists()), None)
    if tool is None or not wal_dir.exists():
        return
    done = subprocess.run(
        [tool, "--stats=record", "-p", str(wal_dir), "-s", start, "-e", end],
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout.rstrip() or done.stderr.rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flush_wal", description=__doc__)
    parser.add_argument(
        "url", help="a superuser URL, e.g. postgresql://postgres@127.0.0.1/postgres"
    )
    parser.add_argument("k", nargs="*", type=int, default=[1, 2, 3, 4], help="events per chunk")
    parser.add_argument("--answers", type=int, default=1000)
    parser.add_argument("--flushes", type=int, default=30)
    args = parser.parse_args()
    for k in args.k:
        asyncio.run(measure(args.url, k, answers=args.answers, flushes=args.flushes))


if __name__ == "__main__":
    main()
