"""A log's events as chunks (rows of event_chunks), and flush statements, stay within bounds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from server.eventlog import MAX_CHUNK_CHARS, MAX_CHUNK_EVENTS, MessageLog
from server.events import Chunk, Event, delta_data, progress_data
from server.flusher import MAX_STATEMENT_CHARS, MAX_STATEMENT_CHUNKS, bounded
from server.models import Message
from server.store import Pair, StoredMessage


def _message(role: str, sequence: int) -> Message:
    now = datetime.now(UTC)
    return Message(
        id=uuid.uuid4(),
        project_id=uuid.UUID(int=1),
        sequence=sequence,
        role=role,  # type: ignore[arg-type]
        kind="message",
        content="",
        status="success" if role == "user" else "pending",
        image_urls=[],
        client_request_id=None,
        created_by=uuid.UUID(int=2),
        created_at=now,
        updated_at=now,
        error=None,
        usage=None,
        finish_reason=None,
        reasoning=None,
        reasoning_ms=None,
    )


def log() -> MessageLog:
    pair = Pair(StoredMessage(_message("user", 1), 0), StoredMessage(_message("assistant", 2), 1))
    return MessageLog(pair)


def test_a_chunk_round_trips_its_events() -> None:
    events = [
        Event(2, "progress", progress_data("thinking", "a\nb", None)),
        Event(3, "delta", delta_data("line one\nline two")),
        Event(4, "delta", delta_data("")),
    ]
    chunk = Chunk.of(events)
    assert (chunk.first_event_id, chunk.last_event_id, chunk.kinds) == (2, 4, "pdd")
    assert chunk.data.count("\n") == len(events) - 1  # the separators are the only raw newlines
    assert chunk.events() == events


def test_a_long_backlog_is_sealed_into_bounded_chunks_in_order() -> None:
    backlog = log()
    for i in range(3 * MAX_CHUNK_EVENTS + 7):
        backlog.add_delta(f"piece {i} ")
    big = log()
    for _ in range(6):
        big.add_delta("x" * (MAX_CHUNK_CHARS // 4))
    for message_log in (backlog, big):
        item = message_log.snapshot()
        assert len(item.chunks) > 1
        assert all(len(c.kinds) <= MAX_CHUNK_EVENTS for c in item.chunks)
        assert all(len(c.data) <= MAX_CHUNK_CHARS for c in item.chunks)
        ids = [e.id for c in item.chunks for e in c.events()]
        assert ids == list(range(2, len(message_log.frames) + 1))


def test_a_snapshot_sent_again_carries_the_same_chunks_and_more() -> None:
    """A flush whose reply was lost is sent again: its chunks must not change."""
    again = log()
    again.add_delta("one ")
    first = again.snapshot()
    again.add_delta("two ")
    second = again.snapshot()
    assert list(second.chunks[: len(first.chunks)]) == list(first.chunks)
    assert second.chunks[-1].first_event_id == first.chunks[-1].last_event_id + 1


def test_flush_statements_are_bounded() -> None:
    many = []
    for _ in range(3):
        backlog = log()
        for i in range(MAX_STATEMENT_CHUNKS * MAX_CHUNK_EVENTS // 2 + 1):
            backlog.add_delta(f"{i}")
        many.append(backlog)
    batches = list(bounded(many))
    assert [len(b) for b in batches] == [1, 1, 1]  # each log alone fills more than half
    small = [log() for _ in range(10)]
    for message_log in small:
        message_log.add_delta("y" * (MAX_STATEMENT_CHARS // 4))
    sizes = [len(b) for b in bounded(small)]
    assert sum(sizes) == 10 and max(sizes) <= 4
