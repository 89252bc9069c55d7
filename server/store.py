"""Typed data access over the named queries of ``sql/queries.sql``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from server.db import Database, Row
from server.events import Event
from server.models import ErrorInfo, Message, Project


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    username: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message and the id of the last event of its log (assistant messages only)."""

    message: Message
    last_event_id: int


@dataclass(frozen=True, slots=True)
class Pair:
    user: StoredMessage
    assistant: StoredMessage


@dataclass(frozen=True, slots=True)
class FlushItem:
    """One running message's new state and its events not yet written."""

    project_id: UUID
    message_id: UUID
    status: str
    content: str
    last_event_id: int
    error: ErrorInfo | None
    events: Sequence[Event]


def message_from_row(row: Row) -> StoredMessage:
    # Rows come from our own schema, whose constraints already hold what validation would check:
    # construct without validating (this is on every generation's path).
    error = None
    if row["error_code"] is not None:
        error = ErrorInfo.model_construct(
            code=row["error_code"], message=row["error_message"] or ""
        )
    message = Message.model_construct(
        id=row["id"],
        project_id=row["project_id"],
        sequence=row["sequence"],
        role=row["role"],
        kind=row["kind"],
        content=row["content"],
        status=row["status"],
        image_urls=list(row["image_urls"]),
        client_request_id=row["client_request_id"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        error=error,
    )
    return StoredMessage(message, row["last_event_id"])


def project_from_row(row: Row) -> Project:
    return Project(
        id=row["id"],
        title=row["title"],
        message_count=row["last_sequence"],
        created_at=row["created_at"],
    )


def _pair(rows: Sequence[Row]) -> Pair | None:
    by_role = {row["role"]: message_from_row(row) for row in rows}
    if set(by_role) != {"user", "assistant"}:
        return None
    return Pair(user=by_role["user"], assistant=by_role["assistant"])


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    @asynccontextmanager
    async def single(cls, url: str) -> AsyncIterator[Store]:
        """A store on one connection, for short tasks (the CLI, test set-up)."""
        db = Database(url, min_size=1, max_size=1)
        await db.open()
        try:
            yield cls(db)
        finally:
            await db.close()

    # Users and tokens

    async def user_for_token_hash(self, token_hash: bytes) -> User | None:
        row = await self.db.fetchrow("user_for_token_hash", token_hash)
        return None if row is None else User(row["id"], row["username"])

    async def create_token(self, username: str, token_hash: bytes) -> UUID:
        async with self.db.session() as session, session.transaction():
            user_id: UUID = await session.fetchval("upsert_user", username)
            await session.fetchval("insert_token", user_id, token_hash)
        return user_id

    async def revoke_token(self, token_hash: bytes) -> int:
        return len(await self.db.fetch("revoke_token", token_hash))

    async def revoke_user_tokens(self, username: str) -> int:
        return len(await self.db.fetch("revoke_user_tokens", username))

    async def count_users(self) -> int:
        count: int = await self.db.fetchval("count_users")
        return count

    # Projects

    async def create_project(self, owner_id: UUID, title: str) -> Project:
        row = await self.db.fetchrow("insert_project", owner_id, title)
        assert row is not None
        return project_from_row(row)

    async def list_projects(self, owner_id: UUID, limit: int) -> list[Project]:
        return [project_from_row(r) for r in await self.db.fetch("list_projects", owner_id, limit)]

    async def get_project(self, project_id: UUID, owner_id: UUID) -> Project | None:
        row = await self.db.fetchrow("get_project", project_id, owner_id)
        return None if row is None else project_from_row(row)

    # Messages

    async def reserve_pair(
        self,
        *,
        project_id: UUID,
        owner_id: UUID,
        content: str,
        image_urls: list[str],
        client_request_id: str | None,
        lease_owner: UUID,
        lease_seconds: float,
        running_cap: int,
    ) -> Pair | None:
        """Reserve sequences 2k-1, 2k and write both messages; None if not the owner's project.

        Raises ``DuplicateRequest`` when ``client_request_id`` is already used in the project, and
        ``TooManyRunning`` when the user already runs ``running_cap`` generations.
        """
        rows = await self.db.fetch(
            "reserve_pair",
            project_id,
            owner_id,
            content,
            image_urls,
            client_request_id,
            lease_owner,
            lease_seconds,
            running_cap,
        )
        return _pair(rows)

    async def pair_by_request_id(
        self, project_id: UUID, owner_id: UUID, client_request_id: str
    ) -> Pair | None:
        rows = await self.db.fetch("pair_by_request_id", project_id, owner_id, client_request_id)
        return _pair(rows)

    async def get_message(
        self, project_id: UUID, message_id: UUID, owner_id: UUID
    ) -> StoredMessage | None:
        row = await self.db.fetchrow("get_message", project_id, message_id, owner_id)
        return None if row is None else message_from_row(row)

    async def message_by_id(self, project_id: UUID, message_id: UUID) -> StoredMessage | None:
        row = await self.db.fetchrow("message_by_id", project_id, message_id)
        return None if row is None else message_from_row(row)

    async def pair_of(self, assistant: Message) -> Pair | None:
        rows = await self.db.fetch(
            "get_pair_of_assistant", assistant.project_id, assistant.sequence
        )
        return _pair(rows)

    async def history(
        self,
        project_id: UUID,
        owner_id: UUID,
        *,
        limit: int,
        before: int | None,
        after: int | None,
    ) -> tuple[list[Message], bool] | None:
        """A page in ascending order and whether more exist that way; None: not found."""
        if after is not None:
            rows = await self.db.fetch("history_after", project_id, owner_id, limit + 1, after)
        elif before is not None:
            rows = await self.db.fetch("history_before", project_id, owner_id, limit + 1, before)
        else:
            rows = await self.db.fetch("history_latest", project_id, owner_id, limit + 1)
        if not rows:
            return None
        messages = [message_from_row(r).message for r in rows if r["id"] is not None]
        has_more = len(messages) > limit
        messages = messages[:limit]
        if after is None:
            messages.reverse()
        return messages, has_more

    async def recent_history(
        self, project_id: UUID, before_sequence: int, limit: int
    ) -> list[Message]:
        rows = await self.db.fetch("recent_history", project_id, before_sequence, limit)
        return [message_from_row(r).message for r in rows]

    async def events_after(
        self, project_id: UUID, message_id: UUID, after: int, limit: int
    ) -> list[Event]:
        rows = await self.db.fetch("events_after", project_id, message_id, after, limit)
        return [Event(r["event_id"], r["name"], r["data"]) for r in rows]

    async def renew_leases(
        self, lease_owner: UUID, lease_seconds: float, running: Sequence[tuple[UUID, UUID]]
    ) -> set[UUID]:
        """Extend this owner's leases on ``(project id, message id)``; return the ids still held."""
        rows = await self.db.fetch(
            "renew_leases",
            lease_owner,
            lease_seconds,
            [p for p, _ in running],
            [m for _, m in running],
        )
        return {r["id"] for r in rows}

    async def prune_events(self, retention_seconds: float, batch: int) -> int:
        """Delete up to ``batch`` stored events of messages finished long enough ago."""
        async with self.db.session() as session:
            status = await session.execute_sql(
                self.db.queries["prune_events"], retention_seconds, batch
            )
        return int(status.split()[-1])

    async def reap_expired(self, limit: int) -> list[UUID]:
        return [r["id"] for r in await self.db.fetch("reap_expired", limit)]

    async def cancel(
        self, project_id: UUID, message_id: UUID, owner_id: UUID
    ) -> StoredMessage | None:
        """Cancel a running assistant message; None when it is not running (or not found)."""
        row = await self.db.fetchrow("cancel_message", project_id, message_id, owner_id)
        return None if row is None else message_from_row(row)

    async def flush(self, lease_owner: UUID, items: Sequence[FlushItem]) -> dict[UUID, datetime]:
        """Write a batch; return ``{message id: updated_at}`` of the rows this owner still held."""
        events = [(item, event) for item in items for event in item.events]
        rows = await self.db.fetch(
            "flush",
            lease_owner,
            [i.project_id for i in items],
            [i.message_id for i in items],
            [i.status for i in items],
            [i.content for i in items],
            [i.last_event_id for i in items],
            [i.error.code if i.error else None for i in items],
            [i.error.message if i.error else None for i in items],
            [i.project_id for i, _ in events],
            [i.message_id for i, _ in events],
            [e.id for _, e in events],
            [e.name for _, e in events],
            [e.data for _, e in events],
        )
        return {r["id"]: r["updated_at"] for r in rows}
