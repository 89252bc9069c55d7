"""On Citus: the hot path's delegated functions (sql/citus.sql) run on one node, their owner's.

The EXPLAIN test (test_operations.py) sees a call of ``reserve_pair`` or ``flush`` as one task on
one node; this one looks inside. Each function is called on the worker node that holds the
owner's shard, with ``citus.log_remote_commands`` on: Citus then reports, as a notice, every
command it sends to another node (or to this one over a connection: an intermediate result, a
two-phase commit). A body whose steps all run on the local shards sends none. Every path of the
two bodies is taken: a reservation, a queued one (enqueue), a refused one (reject), a tool-result
turn; a flush of chunks, a flush that ends an answer with a queued answer behind it (the users'
rows and the queue's hint), and the same flush sent again (idempotent).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.citus import call_text
from server.db import load_queries
from server.events import Chunk, delta_data
from server.store import FlushItem, flush_arguments
from tests.citus_cluster import CITUS_URL, with_database
from tests.support import create_user

pytestmark = pytest.mark.skipif(
    not CITUS_URL, reason="Citus's delegated functions: runs in `make test-citus` (tests/citus.sh)"
)

QUERIES = load_queries()


class OwnerNode:
    """A session on the worker node of one owner's shard, collecting Citus's notices."""

    def __init__(self, conn: asyncpg.Connection, owner: uuid.UUID) -> None:
        self.conn = conn
        self.owner = owner
        self.notices: list[str] = []
        conn.add_log_listener(lambda _c, message: self.notices.append(str(message.message)))

    async def call(self, statement: str, *args: Any) -> list[asyncpg.Record]:
        self.notices.clear()
        parameters = len((await self.conn.prepare(QUERIES[statement])).get_parameters())
        assert len(args) == parameters, statement
        rows = await self.conn.fetch(call_text(statement, parameters), *args, self.owner)
        remote = [n for n in self.notices if n.startswith("issuing")]
        assert not remote, f"{statement} sent commands to other nodes: {remote}"
        return [row[0] for row in rows]


@pytest.fixture
async def owner_node(database_url: str) -> AsyncIterator[OwnerNode]:
    await create_user(database_url, "alice")
    conn = await asyncpg.connect(database_url)
    try:
        owner = await conn.fetchval("SELECT id FROM users WHERE username = 'alice'")
        address = await conn.fetchval(
            "SELECT n.nodename || ':' || n.nodeport"
            " FROM pg_dist_placement AS p JOIN pg_dist_node AS n USING (groupid)"
            " WHERE p.shardid = get_shard_id_for_distribution_column('messages', $1::uuid)",
            owner,
        )
    finally:
        await conn.close()
    database = database_url.rpartition("/")[2].partition("?")[0]
    node = await asyncpg.connect(with_database(f"postgresql://postgres@{address}/x", database))
    try:
        await node.execute("SET citus.log_remote_commands = on")
        await node.execute("SET client_min_messages = notice")
        owner_node = OwnerNode(node, owner)
        # The check can see: a statement on every shard issues commands to the other node.
        await node.fetch("SELECT count(*) FROM projects")
        assert any(n.startswith("issuing") for n in owner_node.notices), owner_node.notices
        yield owner_node
    finally:
        await node.close()


async def reserve(
    node: OwnerNode,
    project: uuid.UUID,
    worker: uuid.UUID,
    policy: str = "concurrent",
    results: str | None = None,
) -> list[asyncpg.Record]:
    return await node.call(
        "reserve_pair",
        project,
        node.owner,
        "hello",
        [],
        None,
        worker,
        10,
        policy,
        results,
        None,
        None,
    )


def item(
    node: OwnerNode,
    project: uuid.UUID,
    message: asyncpg.Record,
    status: str,
    chunks: list[Chunk],
    *,
    changes: bool = True,
    content: str | None = None,
    last: int = 1,
    tool_calls: str | None = None,
) -> FlushItem:
    return FlushItem(
        project_id=project,
        owner_id=node.owner,
        message_id=message["id"],
        status=status,
        content=content,
        last_event_id=last,
        error=None,
        chunks=chunks,
        changes_status=changes,
        finish_reason="tool_calls" if tool_calls else ("stop" if content is not None else None),
        tool_calls=tool_calls,
    )


async def test_the_hot_path_runs_on_its_owners_node_alone(owner_node: OwnerNode) -> None:
    node = owner_node
    worker = uuid.uuid4()
    await node.conn.execute(
        "INSERT INTO workers (id, expires_at, host, pid) VALUES ($1, now() + interval '1 hour',"
        " 'test', 0)",
        worker,
    )
    project = await node.conn.fetchval(
        "INSERT INTO projects (owner_id, title) VALUES ($1, 't') RETURNING id", node.owner
    )

    # A reservation, then one queued behind it, then one refused (reject).
    user, head = await reserve(node, project, worker)
    assert (user["role"], user["sequence"], head["sequence"]) == ("user", 1, 2)
    assert head["status"] == "pending" and head["last_event_id"] == 1
    _, queued = await reserve(node, project, worker, "enqueue")
    assert queued["last_event_id"] == 2, "queued: its log starts with the queued event"
    with pytest.raises(asyncpg.RaiseError, match="answer_running") as refused:
        await reserve(node, project, worker, "reject")
    assert str(refused.value.detail).split() == [str(queued["id"]), "4"], "the newest running"

    # A flush of chunks that starts the head, then one of chunks only.
    first = Chunk(2, "d", delta_data("Hel"))
    rows = await node.call(
        "flush",
        *flush_arguments(worker, [item(node, project, head, "streaming", [first])], notify=False),
    )
    assert [r[0] for r in rows] == [head["id"]] and rows[0][1] is not None
    more = Chunk(3, "d", delta_data("lo"))
    rows = await node.call(
        "flush",
        *flush_arguments(
            worker, [item(node, project, head, "streaming", [more], changes=False)], notify=False
        ),
    )
    assert [(r[0], r[1]) for r in rows] == [(head["id"], None)]

    # The end: the row, the terminal marker, the user's running count, and the queue's hint
    # (the queued answer is now at the head of its project). Then the same flush again.
    calls = json.dumps(
        [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    )
    end = flush_arguments(
        worker,
        [item(node, project, head, "success", [], content="Hello", last=4, tool_calls=calls)],
        notify=False,
    )
    running = await node.conn.fetchval(
        "SELECT running_generations FROM user_running WHERE user_id = $1", node.owner
    )
    rows = await node.call("flush", *end)
    assert [r[0] for r in rows] == [head["id"]]
    assert rows[0][2] == f"{node.owner}/{project}", "the queue's hint names the project"
    assert (
        await node.conn.fetchval(
            "SELECT running_generations FROM user_running WHERE user_id = $1", node.owner
        )
        == running - 1
    )
    again = await node.call("flush", *end)
    assert [(r[0], r[2]) for r in again] == [(head["id"], None)], "found written, not rewritten"
    stored = await node.conn.fetchrow(
        "SELECT status, content, last_event_id FROM messages WHERE created_by = $1 AND id = $2",
        node.owner,
        head["id"],
    )
    assert stored is not None and tuple(stored) == ("success", "Hello", 4)

    # A tool-result turn: refused unless it answers every call of the latest answer.
    with pytest.raises(asyncpg.RaiseError, match="tool_calls_not_pending"):
        await reserve(node, project, worker, results=json.dumps([{"tool_call_id": "call_1"}]))
    other = await node.conn.fetchval(
        "INSERT INTO projects (owner_id, title) VALUES ($1, 'u') RETURNING id", node.owner
    )
    _, asked = await reserve(node, other, worker)
    await node.call(
        "flush",
        *flush_arguments(
            worker,
            [item(node, other, asked, "success", [], content="", last=2, tool_calls=calls)],
            notify=False,
        ),
    )
    with pytest.raises(asyncpg.RaiseError, match="tool_results_mismatch"):
        await reserve(node, other, worker, results=json.dumps([{"tool_call_id": "call_2"}]))
    results = json.dumps([{"tool_call_id": "call_1", "content": "42"}])
    tool, answer = await reserve(node, other, worker, results=results)
    assert (tool["role"], tool["sequence"], answer["sequence"]) == ("tool", 3, 4)
