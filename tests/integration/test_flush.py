"""The batched flush against a real PostgreSQL: what one statement writes, what a retry does, and
what the fence lets through.

A flush whose COMMIT reached the database but whose reply was lost (the connection broke in
between) is sent again by the flusher. Regression: the retry's events hit the primary key of the
event table and the whole statement failed, every time, so the worker never wrote that message
(nor any other in the same batch) again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest

from server.db import connect
from server.eventlog import MessageLog
from server.events import Chunk, Event, delta_data
from server.flusher import Flusher, FlushPolicy
from server.models import ErrorInfo
from server.store import FlushItem, Pair, Store

TERMINAL = ("success", "error", "cancelled")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with Store.single(database_url) as store:
        yield store


@pytest.fixture
async def worker(store: Store) -> UUID:
    worker = uuid4()
    await store.register_worker(worker, 30, "test", 0)
    return worker


async def reserve(store: Store, worker: UUID) -> Pair:
    user_id = await store.create_token(f"user-{uuid4().hex[:8]}", uuid4().bytes)
    project = await store.create_project(user_id, "flushed")
    reservation = await store.reserve_pair(
        project_id=project.id,
        owner_id=user_id,
        content="hello",
        image_urls=[],
        client_request_id=None,
        lease_owner=worker,
        running_cap=10,
    )
    assert reservation is not None
    return reservation.pair


def item(
    pair: Pair,
    chunks: list[list[str]],
    *,
    status: str,
    error: ErrorInfo | None = None,
) -> FlushItem:
    """A flush item whose chunks hold the given delta texts (the first event is id 2)."""
    message = pair.assistant.message
    built, next_id = [], 2
    for texts in chunks:
        events = [Event(next_id + i, "delta", delta_data(t)) for i, t in enumerate(texts)]
        built.append(Chunk.of(events))
        next_id += len(texts)
    final = status in TERMINAL
    return FlushItem(
        project_id=message.project_id,
        owner_id=message.created_by,
        message_id=message.id,
        status=status,
        content="".join(t for texts in chunks for t in texts) if final else None,
        last_event_id=next_id - 1 + (1 if final else 0),
        error=error,
        chunks=built,
    )


async def stored(store: Store, pair: Pair) -> list[tuple[int, str]]:
    message = pair.assistant.message
    events, _ = await store.events_after(message.created_by, message.id, 0, 100)
    return [(e.id, e.data) for e in events]


async def running_count(store: Store, user_id: UUID) -> int:
    async with store.db.session() as session:
        count: int = await session.fetchval_sql(
            "SELECT running_generations FROM user_running WHERE user_id = $1", user_id
        )
    return count


async def sql(store: Store, statement: str, *args: object) -> None:
    async with store.db.session() as session:
        await session.execute_sql(statement, *args)


async def test_a_flush_sent_again_after_its_reply_was_lost_is_a_no_op(
    store: Store, worker: UUID
) -> None:
    pair = await reserve(store, worker)
    first = item(pair, [["Hel", "lo"]], status="streaming")
    assert set(await store.flush(worker, [first])) == {pair.assistant.message.id}
    # The reply was lost: the flusher sends the same chunk again, and one more.
    again = item(pair, [["Hel", "lo"], ["!"]], status="streaming")
    assert set(await store.flush(worker, [again])) == {pair.assistant.message.id}
    assert [i for i, _ in await stored(store, pair)] == [2, 3, 4]


async def test_a_terminal_flush_sent_again_is_written_once(store: Store, worker: UUID) -> None:
    pair = await reserve(store, worker)
    message = pair.assistant.message
    user_id = message.created_by
    assert await running_count(store, user_id) == 1
    final = item(pair, [["Hel", "lo"]], status="success")
    written = await store.flush(worker, [final])
    assert await running_count(store, user_id) == 0
    # Sent again: still ours (not "lost"), untouched, and the running count is not taken twice.
    again = await store.flush(worker, [final])
    assert again == written
    assert await running_count(store, user_id) == 0
    found = await store.message_by_id(message.created_by, message.project_id, message.id)
    assert found is not None
    assert (found.message.status, found.message.content) == ("success", "Hello")
    assert found.message.updated_at == written[message.id]
    assert found.last_event_id == 4
    assert [i for i, _ in await stored(store, pair)] == [2, 3]


async def test_a_terminal_flush_does_not_claim_a_message_the_reaper_closed(
    store: Store, worker: UUID
) -> None:
    pair = await reserve(store, worker)
    message = pair.assistant.message
    await store.flush(worker, [item(pair, [["Hel"]], status="streaming")])
    await sql(store, "UPDATE workers SET expires_at = now() - interval '1 second'")
    reaped = await store.reap(10)
    assert [r.message.id for r in reaped] == [message.id]
    assert (reaped[0].message.status, reaped[0].message.content) == ("error", "Hel")
    # The reaper ended it as error/interrupted at event 3: an error of ours with the same id is
    # not the same write.
    failed = item(
        pair, [["Hel"]], status="error", error=ErrorInfo(code="generator_failed", message="x")
    )
    assert failed.last_event_id == 3
    assert await store.flush(worker, [failed]) == {}


async def test_a_running_message_reads_as_its_stored_log(store: Store, worker: UUID) -> None:
    """The row is written only when the status changes; reads assemble the content so far."""
    pair = await reserve(store, worker)
    message = pair.assistant.message
    await store.flush(worker, [item(pair, [["Hel", "lo"], [" wor"]], status="streaming")])
    found = await store.message_by_id(message.created_by, message.project_id, message.id)
    assert found is not None
    assert (found.message.status, found.message.content, found.last_event_id) == (
        "streaming",
        "Hello wor",
        4,
    )


async def test_nothing_is_written_through_an_expired_heartbeat(store: Store, worker: UUID) -> None:
    """Regression: a lease that had expired, but was not yet reaped, could still be renewed and
    written through."""
    pair = await reserve(store, worker)
    await sql(store, "UPDATE workers SET expires_at = now() - interval '1 second'")
    assert await store.renew_worker(worker, 30) is False
    assert await store.flush(worker, [item(pair, [["late"]], status="streaming")]) == {}
    assert await stored(store, pair) == []


async def test_cancel_keeps_the_written_deltas_and_fences_the_owner(
    store: Store, worker: UUID
) -> None:
    pair = await reserve(store, worker)
    message = pair.assistant.message
    await store.flush(worker, [item(pair, [["one ", "two "]], status="streaming")])
    cancelled = await store.cancel(message.project_id, message.id, message.created_by)
    assert cancelled is not None
    assert (cancelled.message.status, cancelled.message.content) == ("cancelled", "one two ")
    assert cancelled.last_event_id == 4
    assert await running_count(store, message.created_by) == 0
    # The owner's next chunk (ids 4, 5) is refused: the log ends at the terminal event 4.
    late = item(pair, [["one ", "two "], ["three ", "four"]], status="streaming")
    assert await store.flush(worker, [late]) == {}
    assert [i for i, _ in await stored(store, pair)] == [2, 3]
    assert await store.cancel(message.project_id, message.id, message.created_by) is None


async def test_no_identity_yet_is_waited_for_not_taken_for_an_unwritable_message(
    store: Store, worker: UUID
) -> None:
    """Regression (fault suite, seed 3015): while a worker registers a new heartbeat (its old one
    expired), it has no identity to write under; the flusher split the batch down to one message
    and ended a healthy answer as `storage_error`."""
    from server.errors import ServiceUnavailable
    from server.eventlog import MessageLog
    from server.flusher import Flusher, FlushPolicy

    pair = await reserve(store, worker)
    other = await reserve(store, worker)

    def no_identity() -> UUID:
        raise ServiceUnavailable("this worker's heartbeat is not registered yet")

    flusher = Flusher(
        store, no_identity, FlushPolicy(interval=0.01, max_delay=0, min_events=1), on_lost=print
    )
    logs = [MessageLog(pair), MessageLog(other)]
    for log in logs:
        flusher.register(log)
        log.add_delta("hello")
        flusher.mark_dirty(log)
    for _ in range(5):
        with pytest.raises(ServiceUnavailable):
            await flusher.flush_once()
    for log in logs:
        found = await store.message_by_id(
            log.placeholder.created_by, log.placeholder.project_id, log.placeholder.id
        )
        assert found is not None and found.message.status == "pending"
        assert not log.closed and log.unwritten == 1
    # With an identity again, everything is written.
    flusher.worker = lambda: worker
    await flusher.flush_once()
    assert all(log.unwritten == 0 for log in logs)


async def waiting_for_a_lock(database_url: str) -> None:
    """Until some statement of this database waits for a row lock (bounded)."""
    async with connect(database_url) as watcher:
        # On Citus the statement waits on the owner's node: the cluster-wide view shows it.
        citus = await watcher.fetchval_sql("SELECT to_regclass('citus_stat_activity') IS NOT NULL")
        view = "citus_stat_activity" if citus else "pg_stat_activity"
        for _ in range(400):
            waiting = await watcher.fetchval_sql(
                f"SELECT count(*) FROM {view} "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("no statement ever waited for the row")


async def test_drain_beside_the_running_flusher_writes_the_end_once(
    store: Store, worker: UUID, database_url: str
) -> None:
    """Exactly one writer per log. Regression (Reliability II, item 6): ``drain`` flushed beside
    the flusher's own loop; with the loop's terminal write in flight, drain took its own
    snapshot of the same log and wrote it again (the flush answers a terminal write it finds
    already stored as written), so the terminal frame was appended twice, the answer counted
    twice as finished, and ``del chunks[:count]`` ran twice on the same chunks."""
    pair = await reserve(store, worker)
    message = pair.assistant.message
    lost: list[UUID] = []
    policy = FlushPolicy(interval=0.001, max_delay=0, min_events=1)
    flusher = Flusher(store, lambda: worker, policy, on_lost=lost.append)
    log = MessageLog(pair)
    flusher.register(log)
    log.add_delta("Hello")
    log.finish("success")
    flusher.mark_dirty(log)
    running: asyncio.Task[None] | None = None
    try:
        async with connect(database_url) as blocker:
            async with blocker.transaction():
                # The loop's terminal write waits for the message's row, in flight (the loop
                # starts once the row is locked: started before, it could write first)...
                await blocker.execute_sql(
                    "SELECT 1 FROM messages"
                    " WHERE created_by = $3 AND project_id = $1 AND id = $2 FOR UPDATE",
                    message.project_id,
                    message.id,
                    message.created_by,
                )
                running = asyncio.create_task(flusher.run())
                await waiting_for_a_lock(database_url)
                # ... when the worker drains.
                drain = asyncio.create_task(flusher.drain(30))
                await asyncio.sleep(0)  # (drain's first step: it looks at the logs now)
            assert await drain
    finally:
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert lost == []
    assert log.closed and log.terminal_id == 3
    assert len(log.frames) == 3, "the terminal frame was appended more than once"
    assert flusher.pending == 0 and not flusher.logs
    assert [i for i, _ in await stored(store, pair)] == [2]
    found = await store.message_by_id(message.created_by, message.project_id, message.id)
    assert found is not None and found.message.status == "success"


async def test_the_notifications_of_flushes_and_cancels_reach_a_listener_of_the_database_url(
    database_url: str, store: Store, worker: UUID
) -> None:
    """Every worker LISTENs on one connection to the database's URL (on Citus, the coordinator).
    Regression (Citus): a statement's own NOTIFY is sent where the statement runs, and Citus runs
    a router statement on the worker node of the owner's shard, where nobody listens: the turn
    that a draining worker's release_claims gave back to the queue was never heard. The store
    sends such NOTIFYs through the coordinator there (the flush's too, whatever Citus does with
    its steps); a cancel is a function the coordinator runs."""
    import asyncpg

    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    try:
        for channel in ("orderly_events", "orderly_cancel", "orderly_queue"):
            await listener.add_listener(
                channel, lambda _c, _p, channel, payload: heard.put_nowait((channel, payload))
            )
        flushed = await reserve(store, worker)
        cancelled = await reserve(store, worker)
        await store.flush(worker, [item(flushed, [["a", "b"]], status="streaming")])
        message = cancelled.assistant.message
        assert await store.cancel(message.project_id, message.id, message.created_by)
        # A claimed queued answer that a draining worker gives back.
        released = (await reserve(store, worker)).assistant.message
        async with connect(database_url) as session:
            await session.execute_sql(
                "UPDATE messages SET queued_at = now() WHERE created_by = $1 AND id = $2",
                released.created_by,
                released.id,
            )
        await store.release_claims(worker, [released])

        wanted = {
            ("orderly_events", str(flushed.assistant.message.id)),
            ("orderly_cancel", str(message.id)),
            ("orderly_events", str(message.id)),
            ("orderly_queue", f"{released.created_by}/{released.project_id}"),
        }
        got: set[tuple[str, str]] = set()
        async with asyncio.timeout(10):
            while not wanted <= got:
                got.add(await heard.get())
    finally:
        await listener.close()
