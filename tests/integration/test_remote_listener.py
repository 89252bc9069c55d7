"""A listener on another worker than the writer's follows the answer from the table: each flush
sends a NOTIFY, which wakes it, and it reads what is new. It opens its stream (and reopens it at
every reconnect) with a look at the message.

Regression: every wake read the message through message_view, which assembles a running answer's
content from all of its stored deltas (``orderly_stored_content``: every chunk read, every delta's
JSON parsed) and scans all of its chunks for the last event id (``orderly_last_stored_event``).
A wake cost the length of the answer so far, so a few thousand listeners on one long answer kept
the pool busy for everyone. A wake must cost the new events only. Opening the stream read the
message through message_view too (``get_message``), at every reconnect of every listener.

What a wake costs is measured by the database itself, on a real wake (a flush, its NOTIFY, the
LISTEN connection, the follow): the calls of those two functions (``track_functions``) and the
rows read from ``event_chunks`` (``pg_stat_user_tables``), as counted by the listener's backend;
and what an open costs, on a real request to a server whose pool is one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest

from server.db import Listener, connect
from server.events import Batch, Chunk, Event, delta_data
from server.follow import FollowLimits, follow
from server.notifier import Notifier
from server.store import FlushItem, Pair, Store
from tests.support import create_project, create_user, running_server, settings_for

ANSWER_CHUNKS = 400  # the long answer's stored chunks when the listener has caught up
EVENTS_PER_CHUNK = 3
WAKES = 20
WHOLE_ANSWER_FUNCTIONS = ["orderly_stored_content", "orderly_last_stored_event"]
OTHER_ANSWERS_CHUNKS = 20_000  # a table that holds more than one answer, as in production


@pytest.fixture
async def tracked_url(database_url: str) -> str:
    """The test database, with calls of SQL functions counted (for connections opened after)."""
    async with connect(database_url) as session:
        name = await session.fetchval_sql("SELECT current_database()")
        await session.execute_sql(f"ALTER DATABASE \"{name}\" SET track_functions = 'all'")
    return database_url


@pytest.fixture
async def writer(tracked_url: str) -> AsyncIterator[Store]:
    async with Store.single(tracked_url) as store:
        yield store


@pytest.fixture
async def reader(tracked_url: str) -> AsyncIterator[Store]:
    """The listener's worker's store: one connection, so that its statistics can be flushed."""
    async with Store.single(tracked_url) as store:
        yield store


async def reserve(store: Store, worker: UUID, project: UUID | None = None) -> Pair:
    """A pair written by ``worker``, in ``project`` (or a new user's new project)."""
    if project is None:
        user_id = await store.create_token(f"user-{uuid4().hex[:8]}", uuid4().bytes)
        project = (await store.create_project(user_id, "a long answer")).id
    async with store.db.session() as session:
        owner = await session.fetchval_sql("SELECT owner_id FROM projects WHERE id = $1", project)
    reservation = await store.reserve_pair(
        project_id=project,
        owner_id=owner,
        content="tell me everything",
        image_urls=[],
        client_request_id=None,
        lease_owner=worker,
        running_cap=10,
    )
    assert reservation is not None
    return reservation.pair


def chunks_from(first_event_id: int, count: int, name: str = "delta") -> list[Chunk]:
    """``count`` chunks of ``name`` events (deltas, or reasoning: stored and read alike)."""
    chunks = []
    for c in range(count):
        first = first_event_id + c * EVENTS_PER_CHUNK
        texts = [f"word {first + i} " for i in range(EVENTS_PER_CHUNK)]
        events = [Event(first + i, name, delta_data(t)) for i, t in enumerate(texts)]
        chunks.append(Chunk.of(events))
    return chunks


def streaming(pair: Pair, chunks: list[Chunk]) -> FlushItem:
    message = pair.assistant.message
    return FlushItem(
        project_id=message.project_id,
        owner_id=message.created_by,
        message_id=message.id,
        status="streaming",
        content=None,
        last_event_id=chunks[-1].last_event_id,
        error=None,
        chunks=chunks,
    )


async def reported_costs(store: Store) -> tuple[int, int]:
    """(calls of the whole-answer functions, rows read from event_chunks) in this database, with
    this store's connection's own counts included: they are pending in its backend until it
    flushes them, which pg_stat_force_next_flush makes it do before it answers again."""
    async with store.db.session() as session:
        await session.fetchval_sql("SELECT pg_stat_force_next_flush()")
        calls = await session.fetchval_sql(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = ANY($1)",
            WHOLE_ANSWER_FUNCTIONS,
        )
        rows = await session.fetchval_sql(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_user_tables WHERE relname = 'event_chunks'"
        )
    return int(calls), int(rows)


@pytest.mark.parametrize("name", ["delta", "reasoning"])
async def test_a_remote_listeners_wake_reads_only_the_new_events_of_a_long_answer(
    tracked_url: str, writer: Store, reader: Store, name: str
) -> None:
    """A long answer of deltas, or of reasoning (a reasoning model thinks at length: reading
    its reasoning so far at every wake would cost what reading its content did)."""
    worker = uuid4()
    await writer.register_worker(worker, 60, "writer", 0)
    pair = await reserve(writer, worker)
    message = pair.assistant.message
    async with writer.db.session() as session:
        # Other answers' events: the listener's reads must find this one's without a scan.
        await session.execute_sql(
            "INSERT INTO event_chunks (owner_id, message_id, first_event_id, kinds, data) "
            "SELECT gen_random_uuid(), gen_random_uuid(), 2, 'd', '{\"text\":\"x\"}' "
            "FROM generate_series(1, $1)",
            OTHER_ANSWERS_CHUNKS,
        )
    await writer.flush(worker, [streaming(pair, chunks_from(2, ANSWER_CHUNKS, name))])
    async with writer.db.session() as session:
        await session.execute_sql("ANALYZE event_chunks")
    last_event = 1 + ANSWER_CHUNKS * EVENTS_PER_CHUNK

    notifier = Notifier()
    listening = asyncio.Event()
    listener = Listener(
        tracked_url, {"orderly_events": notifier.on_events}, on_connect=listening.set
    )
    listen_task = asyncio.create_task(listener.run())
    closing = asyncio.Event()
    loop = asyncio.get_running_loop()
    limits = FollowLimits(closing, loop.time() + 600, ping_seconds=600)
    stream = follow(message, 0, store=reader, local=None, notifier=notifier, limits=limits)

    async def next_events() -> list[bytes]:
        batch: Batch = await asyncio.wait_for(anext(stream), 60)  # a bound on a hang only
        return batch.frames

    try:
        await asyncio.wait_for(listening.wait(), 60)
        received = 0
        while received < last_event:  # the replay: start, then the answer so far
            received += len(await next_events())
        assert received == last_event

        costs_before = await reported_costs(reader)
        next_id = last_event + 1
        for _ in range(WAKES):
            pending = asyncio.create_task(next_events())
            await writer.flush(worker, [streaming(pair, chunks_from(next_id, 1, name))])
            frames = await pending
            assert frames[0].startswith(b"id: %d\n" % next_id)
            assert frames[-1].startswith(b"id: %d\n" % (next_id + EVENTS_PER_CHUNK - 1))
            next_id += EVENTS_PER_CHUNK
        calls, rows = (
            after - before
            for after, before in zip(await reported_costs(reader), costs_before, strict=True)
        )
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        listen_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listen_task

    assert calls == 0, "a wake assembled the whole answer (message_view)"
    # Each wake reads the chunk it was woken for, and the one before the cursor to find where
    # to start: all of them together read fewer rows than the answer holds.
    assert rows < ANSWER_CHUNKS, f"{WAKES} wakes read {rows} rows of event_chunks"


async def test_opening_a_stream_on_a_long_running_answer_does_not_read_it_whole(
    tracked_url: str, writer: Store
) -> None:
    token = await create_user(tracked_url, "alice")
    settings = settings_for(tracked_url, pool_min_size=1, pool_max_size=1)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = UUID(await create_project(client, "a long answer"))
        # Written by another worker (here, the test's): this server only listens.
        worker = uuid4()
        await writer.register_worker(worker, 60, "writer", 0)
        pair = await reserve(writer, worker, project)
        await writer.flush(worker, [streaming(pair, chunks_from(2, ANSWER_CHUNKS))])
        last_event = 1 + ANSWER_CHUNKS * EVENTS_PER_CHUNK
        url = f"/api/projects/{project}/messages/{pair.assistant.message.id}/events"
        # The server's pooled connection is the one that reads for its requests.
        costs_before = await reported_costs(srv.services.store)
        beyond = await client.get(url, headers={"Last-Event-ID": str(last_event + 1)})
        assert beyond.status_code == 422, "the log's end is still known"
        for cursor in (last_event, last_event - EVENTS_PER_CHUNK):
            async with client.stream(
                "GET", url, headers={"Last-Event-ID": str(cursor)}
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("retry:"):
                        break
        calls, _rows = (
            after - before
            for after, before in zip(
                await reported_costs(srv.services.store), costs_before, strict=True
            )
        )
    assert calls == 0, "opening the stream assembled the whole answer (message_view)"
