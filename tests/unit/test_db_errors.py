"""Driver errors become domain errors in one place (server/db.py)."""

from __future__ import annotations

import asyncpg
import pytest

from server.db import translate_errors
from server.errors import DatabaseUnavailable, DuplicateRequest, WriteConflict


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError("reset by peer"),
        asyncpg.ConnectionDoesNotExistError("closed in the middle of operation"),
        # Regression (fault suite, seed 2010): a pooled connection caught by `pg_ctl stop -m
        # fast` mid-operation raised this, untranslated: a 500 instead of a 503.
        asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"),
    ],
)
def test_the_database_going_away_is_unavailable(error: Exception) -> None:
    with pytest.raises(DatabaseUnavailable), translate_errors():
        raise error


def test_a_writer_and_an_end_taking_the_same_event_id_is_a_write_conflict() -> None:
    """The translation of the key error alone (the race itself, a flush that comes second to
    an end, is tests/integration/test_lock_order.py's
    test_the_flush_that_comes_second_to_an_end_is_a_write_conflict_and_drops_the_answer). It is
    not an unavailable database: the flusher writes the batch again at once, without backing
    off, and it is never an answer's 503 (an end's claim skips a taken id instead)."""
    error = asyncpg.UniqueViolationError("duplicate key value violates unique constraint")
    error.constraint_name = "event_chunks_pkey"
    with pytest.raises(WriteConflict), translate_errors():
        raise error
    assert not issubclass(WriteConflict, DatabaseUnavailable)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            'duplicate key value violates unique constraint "messages_idempotency_key_102078"',
            DuplicateRequest,
        ),
        (
            'duplicate key value violates unique constraint "event_chunks_pkey_102125"',
            WriteConflict,
        ),
    ],
)
def test_a_citus_shard_violation_is_known_by_its_constraint_in_the_message(
    message: str, expected: type[Exception]
) -> None:
    """Regression (Citus): an error relayed by the coordinator names the shard's constraint
    (the schema's name and the shard's id) in its message only, without the constraint field:
    a repeated client_request_id was a 500 instead of the existing pair."""
    error = asyncpg.UniqueViolationError(message)
    assert error.constraint_name is None
    with pytest.raises(expected), translate_errors():
        raise error
