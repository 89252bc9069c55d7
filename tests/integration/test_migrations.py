"""Migrations: the legacy timestamp layout upgrades to sequences; the runner is safe to race."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from server.db import connect
from server.migrate import discover, migrate
from server.store import Store
from tests.support import create_user, generate, running_server, settings_for


async def test_legacy_layout_upgrades_to_sequences(empty_database_url: str) -> None:
    url = empty_database_url
    async with connect(url) as session:
        applied = await migrate(session, to=1)
    assert [m.version for m in applied] == [1]

    conn = await asyncpg.connect(url)
    owner = uuid.uuid4()
    project, other = uuid.uuid4(), uuid.uuid4()
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    tied = t0 + timedelta(seconds=5)
    # Messages inserted out of order, three of them written in the same instant.
    legacy = [
        (uuid.UUID(int=30), project, "assistant", "third", "success", tied),
        (uuid.UUID(int=10), project, "user", "first", "success", t0),
        (uuid.UUID(int=50), project, "assistant", "lost answer", "streaming", tied),
        (uuid.UUID(int=20), project, "user", "second", "success", tied),
        (uuid.UUID(int=60), project, "user", "last", "success", tied + timedelta(seconds=1)),
        (uuid.UUID(int=70), other, "user", "other project", "success", t0),
    ]
    try:
        await conn.execute("INSERT INTO users (id, username) VALUES ($1, 'legacy')", owner)
        await conn.executemany(
            "INSERT INTO projects (id, owner_id, title) VALUES ($1, $2, 't')",
            [(project, owner), (other, owner)],
        )
        await conn.executemany(
            "INSERT INTO messages (id, project_id, role, content, status, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            legacy,
        )
    finally:
        await conn.close()

    async with connect(url) as session:
        applied = await migrate(session)
    assert [m.version for m in applied] == [m.version for m in discover()][1:]

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT sequence, content, status, error_code, created_by "
            "FROM messages WHERE project_id = $1 ORDER BY sequence",
            project,
        )
        last = await conn.fetchval("SELECT last_sequence FROM projects WHERE id = $1", project)
        other_seq = await conn.fetchval(
            "SELECT sequence FROM messages WHERE project_id = $1", other
        )
    finally:
        await conn.close()
    # (created_at, id) order: t0/10, tied/20, tied/30, tied/50, later/60
    assert [(r["sequence"], r["content"]) for r in rows] == [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (4, "lost answer"),
        (5, "last"),
    ]
    assert rows[3]["status"] == "error" and rows[3]["error_code"] == "interrupted"
    assert all(r["created_by"] == owner for r in rows)
    assert last == 5 and other_seq == 1

    # The next generation continues the project's sequence.
    token = await create_user(url, "legacy")
    async with running_server(settings_for(url)) as srv, srv.client(token) as client:
        events = await generate(client, str(project), "after the upgrade")
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    start = events[0].data
    assert start["user_message"]["sequence"] == 6
    assert start["assistant_message"]["sequence"] == 7
    assert [m["sequence"] for m in history] == [1, 2, 3, 4, 5, 6, 7]

    # A generation's context is whole turns, found by role: the upgraded pairs are not all at
    # (2k-1, 2k). The failed answer (4) and the questions without an answer (1, 5) are left out.
    async with Store.single(url) as store:
        context = await store.recent_history(owner, project, 8, 10)
    assert [(m.sequence, m.role) for m in context] == [
        (2, "user"),
        (3, "assistant"),
        (6, "user"),
        (7, "assistant"),
    ]


async def test_concurrent_migrations_apply_each_once(empty_database_url: str) -> None:
    async def run() -> list[int]:
        async with connect(empty_database_url) as session:
            return [m.version for m in await migrate(session)]

    results = await asyncio.gather(*(run() for _ in range(4)))
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in discover()]
    async with connect(empty_database_url) as session:
        assert await migrate(session) == []


async def test_migrated_schema_has_the_declared_constraints(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        names = {
            r[0]
            for r in await conn.fetch(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'messages'::regclass"
            )
        }
        indexes = {
            r[0]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'messages'"
            )
        }
    finally:
        await conn.close()
    assert {
        "messages_project_sequence_key",
        "messages_role_check",
        "messages_status_check",
        "messages_error_check",
        "messages_usage_check",
        "messages_finish_reason_check",
        "messages_outcome_check",
    } <= names
    assert "messages_idempotency_key" in indexes


async def test_new_messages_get_time_ordered_ids(database_url: str) -> None:
    """UUID version 7 (time first): new messages' index entries land together, not on random
    pages (each random first touch after a checkpoint costs a full page of WAL)."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = (await client.post("/api/projects", json={"title": "ids"})).json()["id"]
        ids = []
        for prompt in ("one", "two", "three"):
            events = await generate(client, project, prompt)
            start = events[0].data
            ids += [start["user_message"]["id"], start["assistant_message"]["id"]]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 for u in parsed), ids
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)


# What `migrate` lays out on Citus (docs/scaling.md): a user's rows co-located by owner, the
# small tables copied to every node.
CITUS_LAYOUT = {
    "users": ("reference", None),
    "api_tokens": ("reference", None),
    "workers": ("reference", None),
    "user_running": ("distributed", "user_id"),
    "projects": ("distributed", "owner_id"),
    "messages": ("distributed", "created_by"),
    "event_chunks": ("distributed", "owner_id"),
}
# The schema as a second run could change it: tables' columns, constraints, and (on Citus) the
# layout and the shards.
SCHEMA = """
SELECT (SELECT array_agg(c.conrelid::regclass || ' ' || c.conname || ' ' || c.oid || ' '
                         || pg_get_constraintdef(c.oid) ORDER BY 1)
        FROM pg_constraint AS c JOIN pg_class AS t ON t.oid = c.conrelid
        JOIN pg_namespace AS n ON n.oid = t.relnamespace
        WHERE n.nspname = 'public' AND t.relname !~ '_[0-9]+$') AS constraints,
       (SELECT array_agg(table_name || ' ' || column_name || ' ' || data_type ORDER BY 1)
        FROM information_schema.columns WHERE table_schema = 'public') AS columns
"""


async def test_migrate_lays_out_the_tables_by_owner_on_citus_and_a_second_run_changes_nothing(
    empty_database_url: str,
) -> None:
    async with connect(empty_database_url) as session:
        await migrate(session)
        conn_schema = await session.fetchval_sql(f"SELECT row_to_json(s)::text FROM ({SCHEMA}) s")
        distributed = await session.fetchval_sql(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
        )
        layout: dict[str, tuple[str, str | None]] = {}
        shards = None
        if distributed:
            rows = await session.fetchval_sql(
                "SELECT array_agg(table_name::text || ' ' || citus_table_type || ' '"
                " || distribution_column || ' ' || colocation_id ORDER BY 1) FROM citus_tables"
            )
            colocations = set()
            for row in rows:
                table, kind, column, colocation = row.split(" ")
                layout[table] = (kind, None if column == "<none>" else column)
                if kind == "distributed":
                    colocations.add(colocation)
            assert colocations and len(colocations) == 1, "co-located: one colocation group"
            shards = await session.fetchval_sql(
                "SELECT array_agg(shardid ORDER BY shardid) FROM pg_dist_shard"
            )
        assert layout == (CITUS_LAYOUT if distributed else {})
        # A second run applies nothing and changes nothing.
        assert await migrate(session) == []
        assert (
            await session.fetchval_sql(f"SELECT row_to_json(s)::text FROM ({SCHEMA}) s")
            == conn_schema
        )
        if distributed:
            assert (
                await session.fetchval_sql(
                    "SELECT array_agg(shardid ORDER BY shardid) FROM pg_dist_shard"
                )
                == shards
            )
