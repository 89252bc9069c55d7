"""The invariants after each model-pace step, through the public API where it can be: each
answer's events replayed from ``Last-Event-ID: 0`` (``GET .../messages/{m}/events``), their
delta texts joined and compared with the terminal event's content and with the message row's
content; ids 1..n without gaps and one terminal event, last. Never by reading the event table:
its layout is the write path's business and changes with it.

The rows (status, times, content) are read from ``messages``, whose columns are the API's."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from bench.wire import Connection, request_bytes

TERMINAL = ("done", "error", "cancelled")
EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Row:
    id: UUID
    project_id: UUID
    request_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    content: str
    reasoning: str | None

    @property
    def seconds(self) -> float:
        return (self.updated_at - self.created_at).total_seconds()


async def rows(url: str, projects: list[UUID], tag: str) -> dict[str, Row]:
    """The assistant messages of one step (their idempotency keys start with ``tag-``), by key."""
    conn = await asyncpg.connect(url, command_timeout=300)
    try:
        found = await conn.fetch(
            "SELECT id, project_id, client_request_id, status, created_at, updated_at, content,"
            " reasoning"
            " FROM messages WHERE project_id = ANY($1::uuid[]) AND role = 'assistant'"
            " AND client_request_id LIKE $2",
            projects,
            f"{tag}-%",
        )
    finally:
        await conn.close()
    return {r["client_request_id"]: Row(*r.values()) for r in found}


@dataclass(frozen=True, slots=True)
class Replay:
    ids_ok: bool
    terminal: str | None
    status: str | None
    error_code: str | None
    joined: str
    content: str | None


def parse_events(body: bytes) -> Replay:
    """The frames of a replayed stream: ids in order from 1, delta texts, the terminal event."""
    ids: list[int] = []
    texts: list[str] = []
    terminal: str | None = None
    message: dict[str, Any] = {}
    error: dict[str, Any] = {}
    after_terminal = False
    for frame in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n") if ": " in line)
        if "id" not in fields:
            continue
        after_terminal = after_terminal or terminal is not None
        ids.append(int(fields["id"]))
        name = fields.get("event", "")
        data = json.loads(fields.get("data", "null"))
        if name == "delta":
            texts.append(data["text"])
        elif name in TERMINAL:
            terminal, message, error = name, data["message"], data.get("error") or {}
    ok = ids == list(range(1, len(ids) + 1)) and terminal is not None and not after_terminal
    return Replay(
        ok,
        terminal,
        message.get("status"),
        error.get("code"),
        "".join(texts),
        message.get("content"),
    )


async def replay(port: int, row: Row, token: str) -> Replay | str:
    path = f"/api/projects/{row.project_id}/messages/{row.id}/events"
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "0"}
    raw = request_bytes("GET", path, port, token=token, headers=headers)
    conn = await Connection.open(port)
    try:
        ex = await asyncio.wait_for(conn.request(raw, keep_body=True), 60)
    finally:
        conn.close()
    if ex.error is not None or ex.status != 200:
        return f"replay answered {ex.status} {ex.error or ''}".strip()
    return parse_events(bytes(ex.body))


async def check_answers(
    port: int, found: dict[str, Row], expected: list[str], tokens: dict[UUID, str]
) -> dict[str, Any]:
    """Replay every answer of the step (a few at a time) and compare."""
    gate = asyncio.Semaphore(8)
    problems: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    examples: list[str] = []

    def problem(kind: str, key: str, detail: str = "") -> None:
        problems[kind] += 1
        if len(examples) < EXAMPLES:
            examples.append(f"{key}: {kind} {detail}".strip())

    async def one(key: str) -> None:
        row = found.get(key)
        if row is None:
            problem("missing_row", key)
            return
        if row.status not in ("success", "error", "cancelled"):
            problem("not_terminal", key, row.status)
        async with gate:
            result = await replay(port, row, tokens[row.project_id])
        if isinstance(result, str):
            problem("replay_failed", key, result)
            return
        outcome = f"error/{result.error_code}" if result.status == "error" else str(result.status)
        outcomes[outcome] += 1
        if not result.ids_ok:
            problem("event_ids", key)
        if result.status != row.status:
            problem("terminal_status_differs_from_row", key, f"{result.status} vs {row.status}")
        if result.joined != result.content:
            problem("deltas_differ_from_terminal_content", key)
        if result.joined != row.content:
            problem("deltas_differ_from_row_content", key)

    await asyncio.gather(*(one(key) for key in expected))
    return {
        "answers": len(expected),
        "outcomes": dict(outcomes),
        "problems": dict(problems),
        "examples": examples,
        "ok": not problems,
    }
