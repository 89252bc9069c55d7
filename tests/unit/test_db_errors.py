"""Driver errors become domain errors in one place (server/db.py)."""

from __future__ import annotations

import asyncpg
import pytest

from server.db import translate_errors
from server.errors import DatabaseUnavailable


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
