"""Invariants 1 and 2 under real concurrency: sequences 1..2n, pairs (2k-1, 2k), all finished."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import asyncpg

from tests.support import create_project, create_user, generate, running_server, settings_for


async def _check_project(conn: asyncpg.Connection, project: str, expected_pairs: int) -> None:
    rows = await conn.fetch(
        "SELECT sequence, role, status, client_request_id, content FROM messages "
        "WHERE project_id = $1 ORDER BY sequence",
        uuid.UUID(project),
    )
    assert [r["sequence"] for r in rows] == list(range(1, 2 * expected_pairs + 1))
    for user, assistant in zip(rows[0::2], rows[1::2], strict=True):
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["sequence"] % 2 == 1 and assistant["sequence"] == user["sequence"] + 1
        assert user["client_request_id"] == assistant["client_request_id"]
        assert assistant["status"] == "success"
    last = await conn.fetchval(
        "SELECT last_sequence FROM projects WHERE id = $1", uuid.UUID(project)
    )
    assert last == 2 * expected_pairs


async def test_concurrent_generations_on_one_project_and_spread(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=3, pool_max_size=20)
    async with running_server(settings) as srv, srv.client(token) as client:
        hot = await create_project(client, "hot")
        spread = [await create_project(client, f"p{i}") for i in range(10)]
        targets = [hot] * 200 + [spread[i % 10] for i in range(200)]

        async def one(project: str, n: int) -> tuple[str, str, list[int]]:
            key = f"req-{n}"
            events = await generate(client, project, f"message {n}", client_request_id=key)
            start = events[0].data
            assert events[-1].event == "done"
            seqs = [start["user_message"]["sequence"], start["assistant_message"]["sequence"]]
            return project, key, seqs

        results = await asyncio.gather(*(one(p, n) for n, p in enumerate(targets)))

    per_project: dict[str, list[int]] = defaultdict(list)
    for project, _key, (user_seq, assistant_seq) in results:
        assert assistant_seq == user_seq + 1 and user_seq % 2 == 1
        per_project[project].append(user_seq)
    conn = await asyncpg.connect(database_url)
    try:
        await _check_project(conn, hot, 200)
        for project in spread:
            await _check_project(conn, project, 20)
        # Each request's pair is the pair its stream announced.
        for project, key, (user_seq, _) in results:
            got = await conn.fetchval(
                "SELECT sequence FROM messages WHERE project_id = $1 AND client_request_id = $2 "
                "AND role = 'user'",
                uuid.UUID(project),
                key,
            )
            assert got == user_seq
    finally:
        await conn.close()


async def test_concurrent_generations_across_two_servers(database_url: str) -> None:
    """Two app instances (as two workers would be) over one database, one project."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=2)
    async with (
        running_server(settings) as one,
        running_server(settings) as two,
        one.client(token) as c1,
        two.client(token) as c2,
    ):
        project = await create_project(c1)
        await asyncio.gather(*(generate(c, project, f"m{i}") for i in range(60) for c in (c1, c2)))
    conn = await asyncpg.connect(database_url)
    try:
        await _check_project(conn, project, 120)
    finally:
        await conn.close()
