"""Lock order: our own statements never wait for each other in a cycle (docs/architecture.md,
"Lock order"), and an end (cancel, interrupt, the reaper) of a running answer always ends it.

The exact races are set up with the real statements on connections of their own: a transaction
of the test holds a lock that one statement needs, so that the others reach the point of the race
while it waits, and the test sees them wait in ``pg_locks``. The last test is the load that found
the deadlocks: answers of one user on a few projects, each cancelled a moment after its 202, on two
workers over one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx
import pytest

from server.auth import issue_token
from server.db import load_queries
from server.eventlog import MessageLog
from server.flusher import Flusher, FlushPolicy
from server.generators.base import Delta, GenerationContext, Item
from server.store import Store, StoredMessage, flush_arguments
from tests.support import (
    GatedGenerator,
    create_project,
    create_user,
    running_server,
    settings_for,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import EmbeddedPostgres


FLUSH = load_queries()["flush"]


# Helpers


@dataclass
class Scene:
    """One user's project whose answers are leased to a live worker, each already streaming
    (its first chunk written: event 2, the delta "0 ")."""

    url: str
    user: UUID
    project: UUID
    worker: UUID
    logs: list[MessageLog]


@contextlib.asynccontextmanager
async def scene(url: str, answers: int) -> AsyncIterator[Scene]:
    worker = uuid.uuid4()
    async with Store.single(url) as store:
        await issue_token(store, "alice")
        user: UUID = await store.db.pool.fetchval("SELECT id FROM users WHERE username = 'alice'")
        project = await store.create_project(user, "locks")
        await store.register_worker(worker, 60, "test", 1)
        logs = []
        for n in range(answers):
            reservation = await store.reserve_pair(
                project_id=project.id,
                owner_id=user,
                content=f"question {n}",
                image_urls=[],
                client_request_id=None,
                lease_owner=worker,
                running_cap=100,
            )
            assert reservation is not None
            log = MessageLog(reservation.pair)
            log.add_delta("0 ")
            logs.append(log)
        await write(store, worker, *logs)
    yield Scene(url, user, project.id, worker, logs)


async def write(store: Store, worker: UUID, *logs: MessageLog) -> set[UUID]:
    """One flush of ``logs``, as the flusher writes them; the ids it found still this worker's."""
    items = [log.snapshot() for log in logs]
    written = await store.flush(worker, items)
    for log, item in zip(logs, items, strict=True):
        if item.message_id in written:
            log.mark_written(item, written[item.message_id])
    return set(written)


def flusher_of(store: Store, s: Scene, lost: list[UUID]) -> Flusher:
    """A flusher of the scene's worker, with every log of the scene registered; the ids of the
    answers it drops go to ``lost``."""
    flusher = Flusher(store, lambda: s.worker, FlushPolicy(0.005, 0.01, 4), on_lost=lost.append)
    for log in s.logs:
        flusher.register(log)
    return flusher


@contextlib.asynccontextmanager
async def holding(
    url: str, sql: str, *args: object
) -> AsyncIterator[tuple[int, asyncpg.Connection]]:
    """A transaction that ran ``sql`` and stays open (rolled back at the end); its id."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(sql, *args)
            xid: int = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
            yield xid, conn
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


async def waits(url: str, *, count: int = 1, on_xid: int | None = None) -> None:
    """Until ``count`` sessions of this database wait for a lock (for ``on_xid``'s end: only
    those that wait for that transaction). On Citus the statements wait on the worker nodes,
    under transaction ids of their own there: every node is counted, and ``on_xid`` (an id of
    the coordinator's) is not looked for."""
    conn = await asyncpg.connect(url)
    try:
        distributed = await conn.fetchval(load_queries()["is_distributed"])
        while True:
            if distributed:
                waiting = await conn.fetchval(
                    "SELECT coalesce(sum(result::int), 0) FROM run_command_on_all_nodes("
                    "$$SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a"
                    "  ON a.pid = l.pid WHERE NOT l.granted"
                    "  AND a.datname = current_database()$$)"
                )
            else:
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a"
                    " ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                    " AND ($1::bigint IS NULL OR (l.locktype = 'transactionid'"
                    "      AND l.transactionid::text::bigint = $1))",
                    on_xid,
                )
            if waiting >= count:
                return
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def deadlocks(url: str) -> int:
    """The database's deadlock count, read on a fresh connection after a pause: each backend
    sends its counters to the statistics lazily (at most once a second, and when it exits)."""
    await asyncio.sleep(1.5)
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval(load_queries()["is_distributed"]):  # every node's (Citus)
            count: int = await conn.fetchval(
                "SELECT sum(result::int) FROM run_command_on_all_nodes($$SELECT deadlocks"
                " FROM pg_stat_database WHERE datname = current_database()$$)"
            )
        else:
            count = await conn.fetchval(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            )
    finally:
        await conn.close()
    return count


async def chunks_of(url: str, message: UUID) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT first_event_id, kinds FROM event_chunks WHERE message_id = $1"
            " ORDER BY first_event_id",
            message,
        )
    finally:
        await conn.close()
    return [(r["first_event_id"], r["kinds"]) for r in rows]


# Exact races


async def test_a_cancel_and_a_flush_that_ends_another_answer_of_the_user_do_not_deadlock(
    database_url: str,
) -> None:
    """The deadlock of the issue: a flush that ends one answer of a user and adds a chunk to
    another, and a cancel of that other one. The flush used to lock the user's row before it
    inserted its chunks, while the cancel claimed its terminal id (the flush's chunk's) before
    it locked the user's row: each waited for the other. The user's row is held here until both
    are in place."""
    async with (
        scene(database_url, 2) as s,
        Store.single(database_url) as flush_store,
        Store.single(database_url) as cancel_store,
    ):
        ending, running = s.logs
        ending.add_delta("1")
        ending.finish("success")
        running.add_delta("1")  # a chunk only: the flush takes no lock on its row
        sql = "UPDATE user_running SET running_generations = running_generations WHERE user_id = $1"
        async with holding(database_url, sql, s.user) as (user_xid, _conn):
            flush = asyncio.create_task(write(flush_store, s.worker, ending, running))
            await waits(database_url, on_xid=user_xid)
            placeholder = running.placeholder
            cancel = asyncio.create_task(
                cancel_store.cancel(placeholder.project_id, placeholder.id, s.user)
            )
            await waits(database_url, count=2)
        written, cancelled = await asyncio.gather(flush, cancel)
    assert written == {ending.placeholder.id, running.placeholder.id}
    assert cancelled is not None
    # The cancel came second: its end follows the flush's chunk, whose text it keeps.
    assert (cancelled.message.status, cancelled.message.content) == ("cancelled", "0 1")
    assert cancelled.last_event_id == 4
    assert await chunks_of(database_url, placeholder.id) == [(2, "d"), (3, "d"), (4, "t")]
    assert await deadlocks(database_url) == 0


async def test_a_cancel_whose_claims_keep_losing_to_the_writer_still_ends_the_answer(
    database_url: str,
) -> None:
    """A cancel claims the terminal id after the last stored event; the writer's flush, in
    flight, stores a chunk at that very id, so the claim loses and is made again after it.
    Here the writer wins six times in a row (each flush held open until the cancel waits for
    it, the next one already started): the cancel used to give up after five and answer 409
    already_finished for an answer that was still running. It ends it, after the last chunk."""
    rounds = 6
    async with (
        scene(database_url, 1) as s,
        Store.single(database_url) as cancel_store,
        contextlib.AsyncExitStack() as stack,
    ):
        [log] = s.logs
        placeholder = log.placeholder
        cancel: asyncio.Task[StoredMessage | None] | None = None
        previous: asyncpg.Connection | None = None
        for n in range(1, rounds + 1):
            # The writer's next flush, in a transaction that stays open: a chunk at the id
            # after the last one (which is not committed yet).
            log.add_delta(f"{n} ")
            item = log.snapshot()
            conn = await stack.enter_async_context(_connection(database_url))
            await conn.execute("BEGIN")
            written = await conn.fetch(FLUSH, *flush_arguments(s.worker, [item]))
            assert [r["id"] for r in written] == [placeholder.id]
            log.mark_written(item, None)
            xid: int = await conn.fetchval("SELECT pg_current_xact_id()::text::bigint")
            if previous is not None:
                await previous.execute("COMMIT")  # the claim that waited for it loses
            else:
                cancel = asyncio.create_task(
                    cancel_store.cancel(placeholder.project_id, placeholder.id, s.user)
                )
            assert cancel is not None
            wait = asyncio.create_task(waits(database_url, on_xid=xid))
            await asyncio.wait([wait, cancel], return_when=asyncio.FIRST_COMPLETED)
            wait.cancel()
            assert not cancel.done(), f"the cancel gave up after {n - 1} lost claims"
            previous = conn
        assert previous is not None and cancel is not None
        await previous.execute("COMMIT")
        cancelled = await cancel
    assert cancelled is not None
    text = "".join(f"{n} " for n in range(rounds + 1))
    assert (cancelled.message.status, cancelled.message.content) == ("cancelled", text)
    assert cancelled.last_event_id == rounds + 3


async def test_the_flush_that_comes_second_to_an_end_is_a_write_conflict_and_drops_the_answer(
    database_url: str,
) -> None:
    """The flusher's real conflict: an end (here a cancel) claims the terminal id after the
    flush's snapshot was taken, and the flush's chunk starts at that id. The flush waits for the
    end, then fails on the key: nothing of it is written, and the flusher writes the batch again
    at once; then the answer is no longer this worker's (it is dropped, its listeners read the
    end), and the other answers of the batch are written."""
    async with (
        scene(database_url, 2) as s,
        Store.single(database_url) as flush_store,
        Store.single(database_url) as cancel_store,
    ):
        late, other = s.logs
        lost: list[UUID] = []
        flusher = flusher_of(flush_store, s, lost)
        target = late.placeholder
        sql = "UPDATE user_running SET running_generations = running_generations WHERE user_id = $1"
        async with holding(database_url, sql, s.user) as (user_xid, _conn):
            # The cancel locks the row, claims id 3 and waits for the user's row, uncommitted.
            cancel = asyncio.create_task(cancel_store.cancel(target.project_id, target.id, s.user))
            await waits(database_url, on_xid=user_xid)
            late.add_delta("late")  # event 3: the id the cancel claimed
            other.add_delta("1")
            flusher.mark_dirty(late)
            flusher.mark_dirty(other)
            flush = asyncio.create_task(flusher.flush_once(everything=True))
            await waits(database_url, count=2)
        cancelled = await cancel
        await flush  # the conflict is handled: no exception, nothing written
        assert (late.written, other.written, lost) == (2, 2, [])
        await flusher.flush_once(everything=True)
    assert lost == [target.id]
    assert other.written == 3
    assert cancelled is not None
    assert (cancelled.message.status, cancelled.message.content) == ("cancelled", "0 ")
    assert await chunks_of(database_url, target.id) == [(2, "d"), (3, "t")]
    assert await deadlocks(database_url) == 0


async def test_an_end_that_commits_while_a_flush_waits_is_never_taken_for_its_chunk(
    database_url: str,
) -> None:
    """The flush finds the answers it still holds first, then writes their chunks. Here it waits
    in between (for the row of another answer, which it ends), and meanwhile a cancel ends the
    first answer: its terminal marker takes the id the flush's chunk starts at. The marker is
    not the chunk: the flush fails on the key as above, and its events never become visible.
    (On Citus the flush is a function of steps, each with its own snapshot: it read the marker as
    the chunk already written, and a client saw events that were never stored.)"""
    async with (
        scene(database_url, 2) as s,
        Store.single(database_url) as flush_store,
        Store.single(database_url) as cancel_store,
    ):
        late, ending = s.logs
        lost: list[UUID] = []
        flusher = flusher_of(flush_store, s, lost)
        target = late.placeholder
        sql = "SELECT 1 FROM messages WHERE created_by = $1 AND id = $2 FOR UPDATE"
        async with holding(database_url, sql, s.user, ending.placeholder.id):
            late.add_delta("late")  # event 3: a chunk only, no lock on its row
            ending.add_delta("1")
            ending.finish("success")  # its row's update waits for the test's lock
            flusher.mark_dirty(late)
            flusher.mark_dirty(ending)
            flush = asyncio.create_task(flusher.flush_once(everything=True))
            await waits(database_url)
            cancelled = await cancel_store.cancel(target.project_id, target.id, s.user)
            assert cancelled is not None and cancelled.last_event_id == 3
        await flush  # the conflict is handled: nothing written
        assert (late.written, late.visible, ending.written, lost) == (2, 2, 2, [])
        await flusher.flush_once(everything=True)
    assert lost == [target.id]
    assert (late.written, late.visible) == (2, 2)
    assert ending.written == 4 and ending.closed
    assert (cancelled.message.status, cancelled.message.content) == ("cancelled", "0 ")
    assert await chunks_of(database_url, target.id) == [(2, "d"), (3, "t")]
    assert await deadlocks(database_url) == 0


async def test_an_interrupt_that_cannot_cancel_the_running_answers_is_not_a_success(
    database_url: str,
) -> None:
    """on_running interrupt: when the earlier answers cannot be cancelled (here the connection
    of the cancel dies while it waits), the request is answered 503, not 202 as if they had
    been; its answer runs on, and the same request sent again cancels them."""
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        url = f"/api/projects/{project}/generations"
        headers = {"Accept": "application/json"}
        first = await client.post(url, json={"message": "first"}, headers=headers)
        assert first.status_code == 202
        earlier = first.json()["assistant_message"]["id"]
        body = {"message": "second", "on_running": "interrupt", "client_request_id": "k1"}
        try:
            sql = "SELECT 1 FROM messages WHERE id = $1 FOR UPDATE"
            async with holding(database_url, sql, uuid.UUID(earlier)) as (_, conn):
                request = asyncio.create_task(client.post(url, json=body, headers=headers))
                # Every statement that waits for the row is ended until the request answers:
                # the interrupt's end (orderly_close), and the earlier answer's flush when it
                # waits first (the close waits for that flush, in the process, before its own
                # statement; ending only the first waiter left the interrupt behind the lock).
                while not request.done():
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                        " AND pid <> pg_backend_pid()"
                    )
                    await asyncio.wait({request}, timeout=0.02)
                failed = await request
            assert failed.status_code == 503, failed.text
            assert failed.json()["code"] == "database_unavailable"
            status = (await client.get(f"/api/projects/{project}/messages/{earlier}")).json()
            assert status["status"] in ("pending", "streaming")
            again = await client.post(url, json=body, headers=headers)
            assert again.status_code == 202, again.text
            ended = (await client.get(f"/api/projects/{project}/messages/{earlier}")).json()
            assert ended["status"] == "cancelled"
        finally:
            generator.gate.set()


# Load


async def _answer(context: GenerationContext) -> AsyncIterator[Item]:
    """1 to 8 deltas 10 ms apart: a cancel 0-80 ms after the 202 meets the first flush, the
    last, or the answer between them."""
    for n in range(1 + context.assistant_message.id.int % 8):
        await asyncio.sleep(0.01)
        yield Delta(f"piece {n} ")


@pytest.mark.slow
async def test_cancels_racing_first_and_last_flushes_on_two_workers_never_deadlock(
    database_url: str, embedded_postgres: EmbeddedPostgres | None
) -> None:
    """200 answers of one user on 10 projects, each cancelled 0-80 ms after its 202, half of the
    cancels on the other worker: no 5xx, no deadlock (the database's count, and its log when
    the test runs the embedded server, where every lock wait of more than 200 ms is logged)."""
    conn = await asyncpg.connect(database_url)
    try:
        name: str = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET log_lock_waits = on')
        await conn.execute(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '200ms'")
    finally:
        await conn.close()
    log = None if embedded_postgres is None else Path(embedded_postgres.data_dir) / "server.log"
    log_start = 0 if log is None else log.stat().st_size
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url)
    statuses: list[int] = []
    rng = random.Random(20261202)

    async def one(submit: httpx.AsyncClient, cancel: httpx.AsyncClient, project: str) -> None:
        accepted = await submit.post(
            f"/api/projects/{project}/generations",
            json={"message": "a question"},
            headers={"Accept": "application/json"},
        )
        statuses.append(accepted.status_code)
        if accepted.status_code != 202:
            return
        await asyncio.sleep(rng.uniform(0, 0.08))
        message = accepted.json()["assistant_message"]["id"]
        ended = await cancel.post(f"/api/projects/{project}/messages/{message}/cancel")
        statuses.append(ended.status_code)

    async with (
        running_server(settings, generator=_answer) as first,
        running_server(settings, generator=_answer) as second,
        _client(first.base_url, token) as a,
        _client(second.base_url, token) as b,
    ):
        projects = [await create_project(a, f"p{n}") for n in range(10)]
        await asyncio.gather(
            *(
                one(a, b, projects[n % 10]) if n % 2 else one(b, a, projects[n % 10])
                for n in range(200)
            )
        )
    assert len(statuses) == 400
    assert [s for s in statuses if s >= 500] == []
    assert set(statuses) <= {202, 409}
    assert await deadlocks(database_url) == 0
    if log is not None:
        text = log.read_text(errors="replace")[log_start:]
        assert [line for line in text.splitlines() if "deadlock detected" in line] == []


# Plumbing


def _client(base_url: str, token: str) -> httpx.AsyncClient:
    # No kept-alive connections: a connection the server closes as idle just as the client
    # reuses it would be a transport error of the test's, not an answer of the server's.
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=400, max_keepalive_connections=0),
    )


@contextlib.asynccontextmanager
async def _connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()
