"""The batched flush against a real PostgreSQL: what one statement writes, and what a retry does.

A flush whose COMMIT reached the database but whose reply was lost (the connection broke in
between) is sent again by the flusher. Regression: the retry's events hit the primary key of
``message_events`` and the whole statement failed, every time, so the worker never wrote that
message (nor any other in the same batch) again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest

from server.events import Event, delta_data
from server.models import ErrorInfo
from server.store import FlushItem, Pair, Store

OWNER = uuid4()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with Store.single(database_url) as store:
        yield store


async def reserve(store: Store) -> Pair:
    user_id = await store.create_token("alice", uuid4().bytes)
    project = await store.create_project(user_id, "flushed")
    pair = await store.reserve_pair(
        project_id=project.id,
        owner_id=user_id,
        content="hello",
        image_urls=[],
        client_request_id=None,
        lease_owner=OWNER,
        lease_seconds=30,
        running_cap=10,
    )
    assert pair is not None
    return pair


def item(pair: Pair, texts: list[str], *, status: str, error: ErrorInfo | None = None) -> FlushItem:
    message = pair.assistant.message
    events = [Event(2 + i, "delta", delta_data(text)) for i, text in enumerate(texts)]
    final = status in ("success", "error", "cancelled")
    return FlushItem(
        project_id=message.project_id,
        message_id=message.id,
        status=status,
        content="".join(texts),
        last_event_id=1 + len(events) + (1 if final else 0),
        error=error,
        events=events,
    )


async def stored_ids(store: Store, pair: Pair) -> list[int]:
    message = pair.assistant.message
    return [e.id for e in await store.events_after(message.project_id, message.id, 0, 100)]


async def running_count(store: Store, user_id: UUID) -> int:
    async with store.db.session() as session:
        count: int = await session.fetchval_sql(
            "SELECT running_generations FROM users WHERE id = $1", user_id
        )
    return count


async def test_a_flush_sent_again_after_its_reply_was_lost_is_a_no_op(store: Store) -> None:
    pair = await reserve(store)
    first = item(pair, ["Hel", "lo"], status="streaming")
    assert set(await store.flush(OWNER, [first])) == {pair.assistant.message.id}
    # The reply was lost: the flusher sends the same events again, with one more.
    again = item(pair, ["Hel", "lo", "!"], status="streaming")
    assert set(await store.flush(OWNER, [again])) == {pair.assistant.message.id}
    assert await stored_ids(store, pair) == [2, 3, 4]


async def test_a_terminal_flush_sent_again_is_written_once(store: Store) -> None:
    pair = await reserve(store)
    message = pair.assistant.message
    user_id = message.created_by
    assert await running_count(store, user_id) == 1
    final = item(pair, ["Hel", "lo"], status="success")
    written = await store.flush(OWNER, [final])
    assert await running_count(store, user_id) == 0
    # Sent again: still ours (not "lost"), untouched, and the running count is not taken twice.
    again = await store.flush(OWNER, [final])
    assert again == written
    assert await running_count(store, user_id) == 0
    stored = await store.message_by_id(message.project_id, message.id)
    assert stored is not None
    assert (stored.message.status, stored.message.content) == ("success", "Hello")
    assert stored.message.updated_at == written[message.id]
    assert await stored_ids(store, pair) == [2, 3]


async def test_a_terminal_flush_does_not_claim_a_message_the_reaper_closed(store: Store) -> None:
    pair = await reserve(store)
    message = pair.assistant.message
    await store.flush(OWNER, [item(pair, ["Hel"], status="streaming")])
    async with store.db.session() as session:
        await session.execute_sql(
            "UPDATE messages SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            message.id,
        )
    assert await store.reap_expired(10) == [message.id]
    # The reaper ended it as error/interrupted at event 3: an error of ours with the same id is
    # not the same write.
    failed = item(
        pair, ["Hel"], status="error", error=ErrorInfo(code="generator_failed", message="x")
    )
    assert failed.last_event_id == 3
    assert await store.flush(OWNER, [failed]) == {}
