"""Typed data access over the named queries of ``sql/queries.sql``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from server.db import Database, Row
from server.errors import AnswerRunning
from server.events import Chunk, Event
from server.models import (
    TERMINAL_STATUSES,
    CompletionTokensDetails,
    ErrorInfo,
    Message,
    Project,
    ToolCall,
    ToolResult,
    Usage,
)

T = TypeVar("T")
# Owners whose shard is remembered (Citus): past this, the cache starts again.
SHARD_CACHE_SIZE = 100_000
# A NOTIFY payload of more ids than this says "*" (payloads are capped at 8000 bytes): message
# ids, and "owner/project" pairs (twice as long).
NOTIFY_IDS = 150
NOTIFY_PROJECTS = 100


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    username: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message and the id of the last event of its log (assistant messages only); an input
    message read to start its answer also carries its turn's tools (JSON text, as sent)."""

    message: Message
    last_event_id: int
    tools: str | None = None
    tool_choice: str | None = None


@dataclass(frozen=True, slots=True)
class Pair:
    user: StoredMessage
    assistant: StoredMessage


@dataclass(frozen=True, slots=True)
class Reservation:
    pair: Pair
    queued: bool  # waits in the queue (on_running enqueue, behind running answers); not leased


@dataclass(frozen=True, slots=True)
class Claim:
    """A queued answer a worker took to start, and how long it had waited."""

    assistant: StoredMessage
    waited: float


@dataclass(frozen=True, slots=True)
class LogTail:
    """What a listener reading a log from the table learns at one read: the stored events after
    its cursor, and the final message once it has ended."""

    ended: StoredMessage | None  # the final row (content, terminal event id) when it has ended
    events: list[Event]  # stored events after the cursor, in order
    more: bool  # whether more chunks may follow the ones read


# not frozen: built per message per flush; 4x cheaper so
@dataclass(slots=True)
class FlushItem:
    """One running message's new state and its chunks not yet known to be written."""

    project_id: UUID
    owner_id: UUID  # the project's owner: the distribution column on Citus
    message_id: UUID
    status: str
    content: str | None  # the final content, when the status is terminal
    last_event_id: int
    error: ErrorInfo | None
    chunks: Sequence[Chunk]
    # Whether the message row changes (its first events, its end): only then is it sent as a
    # row of changes; otherwise its chunks alone name it.
    changes_status: bool = True
    # What the generator reported, at a successful end only.
    usage: Usage | None = None
    finish_reason: str | None = None
    # The final reasoning, when the status is terminal and the model gave some, and how long the
    # model took for it (milliseconds).
    reasoning: str | None = None
    reasoning_ms: int | None = None
    tool_calls: str | None = None  # JSON text, at a successful end with calls

    @property
    def events(self) -> int:
        return sum(len(chunk.kinds) for chunk in self.chunks)

    @property
    def size(self) -> int:
        """Characters this item sends (its chunks' data and its final content)."""
        final = len(self.content or "") + len(self.reasoning or "") + len(self.tool_calls or "")
        return sum(len(chunk.data) for chunk in self.chunks) + final


def message_from_row(row: Row) -> StoredMessage:
    # Rows come from our own schema, whose constraints already hold what validation would check:
    # construct without validating (this is on every generation's path).
    error = None
    if row["error_code"] is not None:
        error = ErrorInfo.model_construct(
            code=row["error_code"], message=row["error_message"] or ""
        )
    usage = None
    if row["prompt_tokens"] is not None:
        details = None
        if row["reasoning_tokens"] is not None:
            details = CompletionTokensDetails.model_construct(
                reasoning_tokens=row["reasoning_tokens"]
            )
        usage = Usage.model_construct(
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            completion_tokens_details=details,
        )
    variant = row.get("variant") or 1
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
        usage=usage,
        finish_reason=row["finish_reason"],
        reasoning=row["reasoning"],
        reasoning_ms=row["reasoning_ms"],
        tool_calls=_tool_calls(row["tool_calls"]),
        tool_results=_tool_results(row["tool_results"]),
        variant=variant,
        variants=max(variant, row.get("variants") or 1),
    )
    return StoredMessage(message, row["last_event_id"], row.get("tools"), row.get("tool_choice"))


def _tool_calls(value: str | None) -> list[ToolCall] | None:
    if value is None:
        return None
    return [ToolCall.model_construct(**call) for call in json.loads(value)]


def _tool_results(value: str | None) -> list[ToolResult] | None:
    if value is None:
        return None
    return [ToolResult.model_construct(**result) for result in json.loads(value)]


def project_from_row(row: Row) -> Project:
    return Project(
        id=row["id"],
        title=row["title"],
        message_count=row["last_sequence"],
        created_at=row["created_at"],
    )


def flush_arguments(
    worker: UUID, items: Sequence[FlushItem], *, notify: bool = True
) -> list[object]:
    """The parameters of the ``flush`` statement for ``items``, all of one shard (tests run it
    in a transaction of their own, to hold a flush open at an exact point of a race); ``notify``:
    the statement sends the NOTIFYs itself."""
    chunks = [(item, chunk) for item in items for chunk in item.chunks]
    changes = [item for item in items if item.changes_status]
    return [
        worker,
        [i.owner_id for i, _ in chunks],
        [i.message_id for i, _ in chunks],
        [c.first_event_id for _, c in chunks],
        [c.kinds for _, c in chunks],
        [c.data for _, c in chunks],
        [i.owner_id for i in changes],
        [i.message_id for i in changes],
        [i.status for i in changes],
        [i.content for i in changes],
        [i.last_event_id for i in changes],
        [i.error.code if i.error else None for i in changes],
        [i.error.message if i.error else None for i in changes],
        [i.usage.prompt_tokens if i.usage else None for i in changes],
        [i.usage.completion_tokens if i.usage else None for i in changes],
        [i.finish_reason for i in changes],
        sorted({i.owner_id for i in items}),
        notify,
        [i.reasoning for i in changes],
        [_reasoning_tokens(i.usage) for i in changes],
        [i.reasoning_ms for i in changes],
        [i.tool_calls for i in changes],
    ]


def _reasoning_tokens(usage: Usage | None) -> int | None:
    details = usage.completion_tokens_details if usage else None
    return details.reasoning_tokens if details else None


def _pair(rows: Sequence[Row]) -> Pair | None:
    """The pair of a generation: its input message (user, or tool) and its answer."""
    inputs = [message_from_row(r) for r in rows if r["role"] in ("user", "tool")]
    answers = [message_from_row(r) for r in rows if r["role"] == "assistant"]
    if len(inputs) != 1 or len(answers) != 1:
        return None
    return Pair(user=inputs[0], assistant=answers[0])


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._shards: dict[UUID, int] = {}  # owner -> shard (Citus)

    async def by_shard(self, items: Iterable[T], owner: Callable[[T], UUID]) -> list[list[T]]:
        """``items`` in groups whose owners' rows live on one shard, so that a statement per
        group is routed to one node: on Citus, asked once per owner (one query for the owners
        not known yet) and remembered; on one PostgreSQL, one group. A shard's id outlives a
        move to another node; after a split, a group may span two shards until the cache
        starts again (its statement is then a correct two-shard transaction)."""
        items = list(items)
        if not self.db.distributed:
            return [items] if items else []
        unknown = sorted({owner(item) for item in items} - self._shards.keys())
        if unknown:
            if len(self._shards) + len(unknown) > SHARD_CACHE_SIZE:
                self._shards.clear()
            for row in await self.db.fetch("shards_of", unknown):
                self._shards[row["owner_id"]] = row["shard"]
        groups: dict[int, list[T]] = {}
        for item in items:
            groups.setdefault(self._shards[owner(item)], []).append(item)
        return list(groups.values())

    async def notify(self, events: Sequence[UUID], queue: Sequence[str]) -> None:
        """Send, through the node the workers LISTEN to, the NOTIFYs of statements that ran on
        another node (Citus): message ids for orderly_events, ``owner/project`` for the queue."""
        if not events and not queue:
            return
        await self.db.fetch(
            "notify",
            _payload([str(i) for i in events], NOTIFY_IDS),
            _payload(queue, NOTIFY_PROJECTS),
        )

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

    async def chat_project(self, project_id: UUID, owner_id: UUID, title: str) -> Project:
        """The caller's project of this id, made now (titled ``title``) if it has none."""
        found = await self.get_project(project_id, owner_id)
        if found is not None:
            return found
        row = await self.db.fetchrow("insert_chat_project", owner_id, project_id, title)
        if row is None:  # made meanwhile
            found = await self.get_project(project_id, owner_id)
            assert found is not None
            return found
        return project_from_row(row)

    async def list_projects(self, owner_id: UUID, limit: int) -> list[Project]:
        return [project_from_row(r) for r in await self.db.fetch("list_projects", owner_id, limit)]

    async def get_project(self, project_id: UUID, owner_id: UUID) -> Project | None:
        row = await self.db.fetchrow("get_project", project_id, owner_id)
        return None if row is None else project_from_row(row)

    async def rename_project(self, project_id: UUID, owner_id: UUID, title: str) -> Project | None:
        """The project with its new title; None when it is not the owner's."""
        row = await self.db.fetchrow("rename_project", project_id, owner_id, title)
        return None if row is None else project_from_row(row)

    async def delete_project(
        self,
        project_id: UUID,
        owner_id: UUID,
        ended: Callable[[list[StoredMessage]], None],
    ) -> bool | None:
        """Delete the project, its messages and their stored events: True. None when it is not
        the owner's (or is gone already).

        Its running answers (queued ones included) are cancelled first, the way the cancel
        endpoint cancels one (``interrupt``), and ``ended`` is given them before their rows go.
        The project's row is locked meanwhile (the lock reserve_pair takes), so no answer starts
        in it: the cancel runs on another connection and commits on its own, so its listeners are
        told (NOTIFY) while the rows are still there. Then one transaction deletes everything,
        every statement naming the project. False, with nothing deleted, if an answer still
        runs then (a cancel that found its answer being written too often: ask again)."""
        async with self.db.session() as session, session.transaction():
            locked = await session.fetchrow("lock_project_for_delete", project_id, owner_id)
            if locked is None:
                return None
            # Every answer of the project is below last_sequence + 1.
            closed = await self.interrupt(project_id, locked["last_sequence"] + 1, owner_id)
            ended(closed)
            if await session.fetchval("project_running", project_id, owner_id):
                return False
            await session.fetch("delete_project_events", project_id, owner_id)
            await session.fetch("delete_project_messages", project_id, owner_id)
            await session.fetch("delete_project", project_id, owner_id)
        return True

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
        running_cap: int,
        on_running: str = "concurrent",
        tool_results: str | None = None,
        tools: str | None = None,
        tool_choice: str | None = None,
    ) -> Reservation | None:
        """Reserve sequences 2k-1, 2k and write both messages; None if not the owner's project.

        Raises ``DuplicateRequest`` when ``client_request_id`` is already used in the project,
        ``TooManyRunning`` when the user already runs ``running_cap`` generations, and
        ``AnswerRunning`` when ``on_running`` is reject and an answer of the project runs. Under
        enqueue, an answer behind running ones is queued rather than leased to ``lease_owner``.
        With ``tool_results`` (JSON text) the input message is a tool message, and the statement
        raises ``ToolCallsNotPending`` or ``ToolResultsMismatch`` unless they answer every call
        of the project's latest answer.
        """
        try:
            rows = await self.db.fetch_routed(
                "reserve_pair",
                owner_id,
                project_id,
                owner_id,
                content,
                image_urls,
                client_request_id,
                lease_owner,
                running_cap,
                on_running,
                tool_results,
                tools,
                tool_choice,
            )
        except AnswerRunning as exc:
            if exc.message_id != "-":
                raise
            # Reserved by a request that committed while this one waited for the project's
            # row: the statement knows its sequence, not its id (see reserve_pair).
            found = await self.db.fetch(
                "get_pair_of_assistant", project_id, exc.sequence, owner_id, None
            )
            named = [r for r in found if r["sequence"] == exc.sequence]
            raise AnswerRunning(str(named[0]["id"]) if named else "-", exc.sequence) from exc
        pair = _pair(rows)
        if pair is None:
            return None
        # A queued placeholder's log already holds its `queued` event (see reserve_pair).
        return Reservation(pair, queued=pair.assistant.last_event_id > 1)

    async def regenerate(
        self,
        *,
        project_id: UUID,
        owner_id: UUID,
        message_id: UUID,
        client_request_id: str | None,
        lease_owner: UUID,
        running_cap: int,
        on_running: str = "concurrent",
    ) -> Reservation | None:
        """Reserve a new variant of the project's latest answer (``message_id``: any variant of
        it) and make it current; the pair is its input message and the new variant. None if the
        project or the message is not the owner's, or the message is not an answer.

        Raises what ``reserve_pair`` raises (``DuplicateRequest``: the key was used in the
        project), and ``NotLatestAnswer`` when a later turn follows the message."""
        rows = await self.db.fetch(
            "regenerate",
            owner_id,
            project_id,
            message_id,
            client_request_id,
            lease_owner,
            running_cap,
            on_running,
        )
        pair = _pair(rows)
        if pair is None:
            return None
        return Reservation(pair, queued=pair.assistant.last_event_id > 1)

    async def variants(
        self, project_id: UUID, message_id: UUID, owner_id: UUID
    ) -> tuple[list[Message], int] | None:
        """The variants of answer ``message_id``'s sequence in order, and the current one's
        number; None: not the owner's, or not an answer."""
        rows = await self.db.fetch("variants", project_id, message_id, owner_id)
        if not rows:
            return None
        current = next((r["variant"] for r in rows if r["is_current"]), rows[-1]["variant"])
        return [message_from_row(r).message for r in rows], current

    async def choose_variant(self, project_id: UUID, message_id: UUID, owner_id: UUID) -> bool:
        """Make ``message_id`` (a variant of the project's latest answer) current; False: not
        the owner's, or not an answer. Raises ``NotLatestAnswer`` for an earlier answer."""
        return bool(await self.db.fetch("choose_variant", owner_id, project_id, message_id))

    async def variant_by_request_id(
        self, project_id: UUID, owner_id: UUID, client_request_id: str
    ) -> Pair | None:
        """The pair of a regenerate made with this key: its input message and the variant;
        None when the key made no variant (a generation's pair holds it, or nothing does)."""
        rows = await self.db.fetch("pair_by_request_id", project_id, owner_id, client_request_id)
        if len(rows) != 1 or rows[0]["role"] != "assistant":
            return None
        return await self.pair_of(message_from_row(rows[0]).message)

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

    async def stream_target(
        self, project_id: UUID, message_id: UUID, owner_id: UUID
    ) -> StoredMessage | None:
        """A message whose stream is being opened, with the id of its log's last event; while it
        runs, its content is left empty (not read: the stream sends the events)."""
        row = await self.db.fetchrow("stream_target", project_id, message_id, owner_id)
        return None if row is None else message_from_row(row)

    async def message_by_id(
        self, owner_id: UUID, project_id: UUID, message_id: UUID
    ) -> StoredMessage | None:
        row = await self.db.fetchrow("message_by_id", project_id, message_id, owner_id)
        return None if row is None else message_from_row(row)

    async def start_pair(self, assistant: Message) -> Pair | None:
        """The pair as the start event shows it: the assistant message's content is empty
        (and its status, error and last event id may be out of date; the event overrides them)."""
        rows = await self.db.fetch(
            "start_pair",
            assistant.project_id,
            assistant.sequence,
            assistant.created_by,
            assistant.id,
        )
        return _pair(rows)

    async def pair_of(self, assistant: Message) -> Pair | None:
        rows = await self.db.fetch(
            "get_pair_of_assistant",
            assistant.project_id,
            assistant.sequence,
            assistant.created_by,
            assistant.id,
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
        self,
        owner_id: UUID,
        project_id: UUID,
        before_sequence: int,
        max_messages: int,
        *,
        tool_turn: bool = False,
    ) -> list[Message]:
        """The context of a generation whose input message is at ``before_sequence``: the latest
        whole successful turns before it (an input message and its answer), at most
        ``max_messages`` messages (an odd number rounds down), in sequence order, ending on an
        answer; tool chains whole (``whole_chains``). For a ``tool_turn`` (its input is a tool
        message) the chain it continues is read back to its start, past the limit if need be:
        an upstream refuses a tool message without the call it answers."""
        turns = max_messages // 2
        if turns < 1 and not tool_turn:
            return []
        page = max(turns, 1)
        rows = await self.db.fetch("recent_history", project_id, before_sequence, page, owner_id)
        messages = [message_from_row(r).message for r in rows]
        while tool_turn and len(rows) == 2 * page and _inside_chain(messages, before_sequence):
            rows = await self.db.fetch(
                "recent_history", project_id, messages[0].sequence, page, owner_id
            )
            messages = [message_from_row(r).message for r in rows] + messages
        return whole_chains(messages, before_sequence if tool_turn else None, turns)

    async def events_after(
        self, owner_id: UUID, message_id: UUID, after: int, limit: int
    ) -> tuple[list[Event], bool]:
        """Stored events after event ``after`` of a message of ``owner_id``, read ``limit``
        chunks at a time; and whether more chunks may follow the ones read."""
        rows = await self.db.fetch("chunks_after", owner_id, message_id, after, limit)
        events = [
            event
            for row in rows
            for event in Chunk(row["first_event_id"], row["kinds"], row["data"]).events()
            if event.id > after
        ]
        return events, len(rows) == limit

    async def log_tail(
        self, owner_id: UUID, project_id: UUID, message_id: UUID, after: int, limit: int
    ) -> LogTail | None:
        """A listener's read: the message's status, its stored events after event ``after``
        (``limit`` chunks at most) and, once it has ended, its final row; None: no such message.
        Costs what is new: the answer's earlier events are neither read nor parsed."""
        row = await self.db.fetchrow("log_tail", project_id, message_id, after, limit, owner_id)
        if row is None:
            return None
        firsts: list[int] = row["first_event_ids"] or []
        events = [
            event
            for first, kinds, data in zip(
                firsts, row["kinds"] or [], row["data"] or [], strict=True
            )
            for event in Chunk(first, kinds, data).events()
            if event.id > after
        ]
        ended = message_from_row(row) if row["status"] in TERMINAL_STATUSES else None
        return LogTail(ended, events, len(firsts) == limit)

    async def flush(self, worker: UUID, items: Sequence[FlushItem]) -> dict[UUID, datetime | None]:
        """Write a batch; return the ids of the messages this worker still held, each with its
        row's ``updated_at`` where the write changed the row (its status).

        One statement per shard (on one PostgreSQL, one statement): each is routed to one node,
        and each is idempotent on its own, so a failure between two of them leaves what was
        written for the next flush to find written. On Citus the NOTIFYs are sent afterwards
        through the coordinator, once for the whole batch."""
        written: dict[UUID, datetime | None] = {}
        here = not self.db.distributed
        queue: list[str] = []
        groups = await self.by_shard(items, lambda item: item.owner_id)
        # The shards' statements run at once, as many as the pool has connections: one after
        # another, a flush of 1,000 answers spread over 32 shards waited for 32 commits in a row
        # (delivery lag p99 1.6 s on a local cluster). Every one is awaited, whatever another
        # did, before an error is raised: none may still be writing when the batch is sent again.
        limit = asyncio.Semaphore(max(1, self.db.max_size))

        async def write(group: Sequence[FlushItem]) -> list[Row]:
            async with limit:
                return await self.db.fetch_routed(
                    "flush", group[0].owner_id, *flush_arguments(worker, group, notify=here)
                )

        results = await asyncio.gather(*(write(g) for g in groups), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for rows in results:
            assert not isinstance(rows, BaseException)
            for r in rows:
                written[r["id"]] = r["updated_at"]
            if rows and rows[0]["queue_hint"]:
                queue.extend(rows[0]["queue_hint"].split(","))
        if not here:
            await self.notify(list(written), queue)
        return written

    # Workers' heartbeats and the reaper

    async def register_worker(
        self, worker: UUID, lease_seconds: float, host: str, pid: int
    ) -> None:
        await self.db.fetch("register_worker", worker, lease_seconds, host, pid)

    async def renew_worker(self, worker: UUID, lease_seconds: float) -> bool:
        """Extend the heartbeat; False if it had already expired (nothing is extended then)."""
        return bool(await self.db.fetch("renew_worker", worker, lease_seconds))

    async def expire_worker(self, worker: UUID) -> None:
        await self.db.fetch("expire_worker", worker)

    async def prune_events(self, retention_seconds: float, batch: int) -> tuple[int, int]:
        """Delete up to ``batch`` stored chunks of messages finished long enough ago; the number
        of chunks and of events deleted."""
        row = await self.db.fetchrow("prune_events", retention_seconds, batch)
        assert row is not None
        return int(row["chunks"]), int(row["events"])

    async def reap(self, limit: int) -> list[StoredMessage]:
        """Close up to ``limit`` running messages whose worker stopped, as ``interrupted``."""
        rows = await self.db.fetch("orphans", limit)
        targets = [(r["created_by"], r["project_id"], r["id"]) for r in rows]
        return await self._close(targets, "error", "interrupted", INTERRUPTED_MESSAGE)

    async def forget_workers(self) -> None:
        leading = [r["lease_owner"] for r in await self.db.fetch("leading_workers")]
        await self.db.fetch("forget_workers", leading)

    async def next_expiry(self, worker: UUID) -> float | None:
        """Seconds until another worker's heartbeat expires (None: there is no other worker)."""
        seconds: float | None = await self.db.fetchval("next_expiry", worker)
        return seconds

    async def cancel(
        self, project_id: UUID, message_id: UUID, owner_id: UUID
    ) -> StoredMessage | None:
        """Cancel a running assistant message, keeping the content its listeners have seen; None
        when it is not running (or not found, or not the caller's)."""
        closed = await self._close(
            [(owner_id, project_id, message_id)], "cancelled", None, None, owner_id
        )
        return closed[0] if closed else None

    async def interrupt(
        self, project_id: UUID, sequence: int, owner_id: UUID, variant: int = 1
    ) -> list[StoredMessage]:
        """Cancel the running answers (queued ones included) of a project before ``sequence``
        (and its variants before ``variant``), the way the cancel endpoint does; the ones this
        call ended.

        Newest first: each end commits on its own, and an end makes the next queued answer's
        turn come, so ending the oldest first let the queue start an answer that this very call
        was about to cancel (its generator ran, for nothing)."""
        rows = await self.db.fetch("running_before", project_id, sequence, owner_id, variant)
        targets = [(owner_id, r["project_id"], r["id"]) for r in rows]
        return await self._close(targets, "cancelled", None, None, owner_id)

    async def end_unwritable(
        self, owner_id: UUID, project_id: UUID, message_id: UUID
    ) -> StoredMessage | None:
        """End a running message that cannot be written (its flush fails whatever we do) as
        ``error``, with the content of its written deltas."""
        closed = await self._close(
            [(owner_id, project_id, message_id)], "error", "storage_error", STORAGE_ERROR_MESSAGE
        )
        return closed[0] if closed else None

    async def _close(
        self,
        targets: Sequence[tuple[UUID, UUID, UUID]],
        status: str,
        code: str | None,
        message: str | None,
        owner_id: UUID | None = None,
    ) -> list[StoredMessage]:
        """End the running ones of ``targets`` (see ``close_message``), one statement each: one
        transaction holds one message's locks, in the lock order of every statement that ends
        answers, so that no end and no flush wait for each other in a cycle. A running target is
        always ended: its end waits for its writer's chunk and claims the id after it, rather
        than giving up."""
        closed: list[StoredMessage] = []
        for target_owner, project_id, message_id in targets:
            row = await self.db.fetchrow(
                "close_message",
                target_owner,
                project_id,
                message_id,
                status,
                code,
                message,
                owner_id,
            )
            if row is not None:
                closed.append(message_from_row(row))
        return closed

    async def held_among(self, worker: UUID, messages: Sequence[Message]) -> set[UUID]:
        """Which of ``messages`` still run under ``worker`` (someone else ended the others)."""
        held: set[UUID] = set()
        for group in await self.by_shard(messages, lambda m: m.created_by):
            rows = await self.db.fetch(
                "held_among", worker, [m.created_by for m in group], [m.id for m in group]
            )
            held.update(r["id"] for r in rows)
        return held

    # The queue (server/queue.py)

    async def claim_queued(
        self, worker: UUID, projects: Sequence[tuple[UUID, UUID]] | None, limit: int
    ) -> list[Claim]:
        """Take, for ``worker``, up to ``limit`` queued answers whose turn has come, in these
        ``(owner, project)`` projects (None: in any project); a statement per shard."""
        if projects is None:
            found = await self.db.fetch("queued_projects", limit)
            projects = [(r["owner_id"], r["project_id"]) for r in found]
        rows: list[Row] = []
        if projects:
            for group in await self.by_shard(projects, lambda p: p[0]):
                if len(rows) >= limit:
                    break
                rows.extend(
                    await self.db.fetch(
                        "claim_queued",
                        worker,
                        [owner for owner, _ in group],
                        [project for _, project in group],
                        limit - len(rows),
                    )
                )
        return [Claim(message_from_row(r), r["waited"] or 0.0) for r in rows]

    async def leased_to(self, worker: UUID) -> list[StoredMessage]:
        """The answers leased to ``worker`` that have not started writing."""
        return [message_from_row(r) for r in await self.db.fetch("leased_to", worker)]

    async def release_claims(self, worker: UUID, messages: Sequence[Message]) -> None:
        """Put claimed answers that did not start back in the queue."""
        here = not self.db.distributed
        queue: list[str] = []
        for group in await self.by_shard(messages, lambda m: m.created_by):
            rows = await self.db.fetch(
                "release_claims", worker, [m.created_by for m in group], [m.id for m in group], here
            )
            queue.extend(r["project"] for r in rows)
        if not here:
            await self.notify([], queue)


def _chains(messages: Sequence[Message]) -> list[list[Message]]:
    """Turns (input, answer) grouped in chains: a tool turn joins the chain of the answer just
    before it (its calls), any other turn starts a chain."""
    chains: list[list[Message]] = []
    for i in range(0, len(messages) - 1, 2):
        question, answer = messages[i], messages[i + 1]
        previous = chains[-1][-1] if chains else None
        follows = previous is not None and previous.sequence == question.sequence - 1
        if question.role == "tool" and follows and _made_calls(previous):
            chains[-1] += [question, answer]
        else:
            chains.append([question, answer])
    return chains


def _made_calls(answer: Message | None) -> bool:
    return answer is not None and answer.finish_reason == "tool_calls" and bool(answer.tool_calls)


def _inside_chain(messages: Sequence[Message], before_sequence: int) -> bool:
    """Whether the chain that the tool message at ``before_sequence`` continues starts before
    ``messages``."""
    chains = _chains(messages)
    if not chains or chains[-1][-1].sequence != before_sequence - 1:
        return False
    return chains[-1][0].role == "tool"


def whole_chains(messages: Sequence[Message], continued: int | None, turns: int) -> list[Message]:
    """The turns of ``messages`` (sequence order) that a context may carry: whole chains only,
    each starting with a user message and answering every call it makes; but the chain that the
    tool message at sequence ``continued`` continues is kept whole whatever its length. Then,
    latest first, the other chains while their turns fit in ``turns``."""
    chains = _chains(messages)
    current: list[Message] = []
    if continued is not None and chains and chains[-1][-1].sequence == continued - 1:
        current = chains.pop()
    kept: list[list[Message]] = []
    room = turns - len(current) // 2
    for chain in reversed(chains):
        if chain[0].role != "user" or _made_calls(chain[-1]):
            continue  # cut at its start, or its last calls were never answered
        if len(chain) // 2 > room:
            break
        kept.insert(0, chain)
        room -= len(chain) // 2
    return [message for chain in [*kept, current] for message in chain]


def _payload(ids: Sequence[str], most: int) -> str | None:
    """A NOTIFY payload naming ``ids``, or "*" past ``most`` (None: nothing to send)."""
    if not ids:
        return None
    return "*" if len(set(ids)) > most else ",".join(dict.fromkeys(ids))


INTERRUPTED_MESSAGE = "the answer was interrupted: the worker writing it stopped"
STORAGE_ERROR_MESSAGE = "the answer could not be stored; it ends with the text written so far"
