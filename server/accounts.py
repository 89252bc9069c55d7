"""Users and their tokens as the operator manages them: listing tokens, revoking one by its id,
removing a user with everything they wrote (``python -m server token list``, ``user remove``).

Only the command line runs these, on a connection of its own, with the queries of
``sql/accounts.sql``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from server.db import connect
from server.resources import SQL_DIR

ACCOUNTS_SQL = SQL_DIR / "accounts.sql"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: UUID
    username: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Removal:
    """What ``remove_user`` found: ``running`` answers refuse it; otherwise what it deleted."""

    found: bool
    running: int = 0
    projects: int = 0
    messages: int = 0
    tokens: int = 0


async def list_tokens(url: str, username: str | None = None) -> list[TokenInfo]:
    async with connect(url, ACCOUNTS_SQL) as session:
        rows = await session.fetch("list_tokens", username)
    return [TokenInfo(r["id"], r["username"], r["created_at"], r["revoked_at"]) for r in rows]


async def revoke_token_id(url: str, token_id: UUID) -> int:
    async with connect(url, ACCOUNTS_SQL) as session:
        return len(await session.fetch("revoke_token_by_id", token_id))


async def remove_user(url: str, username: str) -> Removal:
    """Delete ``username``, their tokens, projects, messages and stored events, in one
    transaction; refused while any answer of theirs is running or queued, whose worker would
    go on writing it."""
    async with connect(url, ACCOUNTS_SQL) as session, session.transaction():
        # The owner's id first (a plain read): on Citus it names the shard of the lock below.
        owner = await session.fetchval("user_id_of", username)
        await session.fetch("lock_projects_of_user", owner)
        user_id = await session.fetchval("lock_user", username)
        if user_id is None:
            return Removal(found=False)
        running: int = await session.fetchval("running_answers_of_user", user_id)
        if running:
            return Removal(found=True, running=running)
        row = await session.fetchrow("remove_user", user_id)
    assert row is not None
    return Removal(
        found=True, projects=row["projects"], messages=row["messages"], tokens=row["tokens"]
    )
