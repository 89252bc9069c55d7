"""The invariants of API.md, checked after the faults have healed.

The database is read directly only for what the HTTP API does not show in one place: sequences,
statuses, when interrupted answers lived (and the users' running counts: ``watch.py``). Events
and content are read through the HTTP API (the storage of events is not this suite's business).
Every check returns the violations it found, as sentences, so that one run reports all of them.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from tests.faults.clients import TERMINAL, ClientRecord, Received, read_stream

RUNNING = ("pending", "streaming")
# The only way an answer may fail here: its worker lost it (an outage outlived its lease). The
# demo generator never fails and writes only storable text, so any other code (a generator
# failure, an answer ended as unwritable) is the service mistaking a fault of the database for
# a fault of the answer.
EXPECTED_ERRORS = frozenset({"interrupted"})
REPLAY_TIMEOUT = 20.0  # a finished message's whole log, read back: bounds waiting only
EVENT_FOR_STATUS = {"success": "done", "error": "error", "cancelled": "cancelled"}


@dataclass(frozen=True, slots=True)
class Row:
    """One message row: what the database is read for."""

    project_id: str
    id: str
    sequence: int
    role: str
    status: str
    client_request_id: str | None


async def message_rows(database_url: str) -> list[Row]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        records = await conn.fetch(
            "SELECT project_id, id, sequence, role, status, client_request_id FROM messages "
            "ORDER BY project_id, sequence"
        )
    finally:
        await conn.close()
    return [
        Row(
            str(r["project_id"]),
            str(r["id"]),
            r["sequence"],
            r["role"],
            r["status"],
            r["client_request_id"],
        )
        for r in records
    ]


async def unfinished(database_url: str) -> list[str]:
    """Messages not terminal yet, each as its row (the evidence when one is stuck: its lease
    among others), without its content, whatever the columns are called by then."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        records = await conn.fetch(
            "SELECT now() AS now, to_jsonb(m) - 'content' - 'image_urls' AS row "
            "FROM messages AS m WHERE status IN ('pending', 'streaming') "
            "ORDER BY project_id, sequence"
        )
    finally:
        await conn.close()
    return [f"at {r['now']}: {r['row']}" for r in records]


# Sequences


def check_sequences(rows: Sequence[Row]) -> list[str]:
    """Per project: 1..2k without gaps; 2k-1 the user's, 2k the assistant's, one request each."""
    found = []
    by_project: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_project[row.project_id].append(row)
    for project, project_rows in by_project.items():
        sequences = [r.sequence for r in project_rows]
        if sequences != list(range(1, len(sequences) + 1)) or len(sequences) % 2:
            found.append(f"project {project}: sequences are not 1..2k: {sequences}")
            continue
        keys = []
        for user, assistant in zip(project_rows[0::2], project_rows[1::2], strict=True):
            if (user.role, assistant.role) != ("user", "assistant"):
                found.append(f"project {project}: {user.sequence},{assistant.sequence} roles")
            if user.client_request_id != assistant.client_request_id:
                found.append(f"project {project}: {user.sequence},{assistant.sequence} keys differ")
            keys.append(user.client_request_id)
        if len(keys) != len(set(keys)):
            found.append(f"project {project}: a client_request_id made two pairs: {keys}")
    return found


def check_pairs_match_clients(rows: Sequence[Row], records: Iterable[ClientRecord]) -> list[str]:
    """Each client's generation is exactly one pair, and every pair is some client's."""
    found = []
    assistants = {(r.project_id, r.client_request_id): r for r in rows if r.role == "assistant"}
    planned: set[tuple[str, str | None]] = set()
    for record in records:
        key = (record.project_id, record.plan.key)
        planned.add(key)
        row = assistants.get(key)
        if record.message_id is not None and (row is None or row.id != record.message_id):
            found.append(f"{record.plan.key}: its message {record.message_id} is not its pair")
    for pair_key, row in assistants.items():
        if pair_key not in planned:
            found.append(f"a pair nobody asked for: {pair_key} (assistant {row.id})")
    return found


# Logs and content, through the API


async def read_back(
    servers: Sequence[httpx.AsyncClient], rows: Sequence[Row]
) -> tuple[dict[str, Any], dict[str, list[Received]], list[str]]:
    """Each finished assistant message through the API, and its log replayed from 0 (on the
    processes in turn); also the problems met doing so."""
    messages: dict[str, Any] = {}
    replays: dict[str, list[Received]] = {}
    found = []
    finished = [r for r in rows if r.role == "assistant" and r.status not in RUNNING]
    for i, row in enumerate(finished):
        server = servers[i % len(servers)]
        base = f"/api/projects/{row.project_id}/messages/{row.id}"
        response = await server.get(base)
        if response.status_code != 200:
            found.append(f"GET message {row.id}: {response.status_code} {response.text[:200]}")
            continue
        messages[row.id] = response.json()
        replay: list[Received] = []
        try:
            reply = await asyncio.wait_for(
                read_stream(
                    server,
                    "GET",
                    f"{base}/events",
                    stop_after=None,
                    into=replay,
                    headers={"Last-Event-ID": "0"},
                ),
                REPLAY_TIMEOUT,
            )
        except TimeoutError:
            found.append(f"replay of {row.id} (finished): still open after {REPLAY_TIMEOUT}s")
        else:
            if reply.status != 200 or reply.detail:
                found.append(f"replay of {row.id}: {reply.status} {reply.detail}")
        replays[row.id] = replay
    return messages, replays, found


def check_log(message: Mapping[str, Any], replay: Sequence[Received], db_status: str) -> list[str]:
    """A finished message's log: 1..n, start first, one terminal event last, that agrees with
    the message; and its content is the joined delta texts."""
    name = message["id"]
    found = []
    if message["status"] != db_status:
        found.append(f"{name}: the API says {message['status']}, the database {db_status}")
    error = message.get("error")
    if error and error["code"] not in EXPECTED_ERRORS:
        found.append(f"{name}: ended error/{error['code']} ({error['message']!r})")
    ids = [e.id for e in replay]
    if ids != list(range(1, len(ids) + 1)):
        return [*found, f"{name}: replayed ids are not 1..n: {ids}"]
    names = [e.event for e in replay]
    if not names or names[0] != "start" or sum(n in TERMINAL for n in names) != 1:
        return [*found, f"{name}: replayed events are not start .. one terminal: {names}"]
    if names[-1] != EVENT_FOR_STATUS.get(message["status"]):
        found.append(f"{name}: ends with {names[-1]} but its status is {message['status']}")
    content = joined_deltas(replay)
    if content != message["content"]:
        found.append(f"{name}: content {message['content']!r} != joined deltas {content!r}")
    final = json.loads(replay[-1].data)["message"]
    if (final["status"], final["content"]) != (message["status"], message["content"]):
        found.append(f"{name}: the terminal event's message differs from the message: {final}")
    return found


def check_client(
    record: ClientRecord, message: Mapping[str, Any] | None, replay: Sequence[Received] | None
) -> list[str]:
    """What one client received across its resumes: each event once, in order, as stored."""
    key = f"{record.plan.key} ({record.plan.style})"
    found = [f"{key}: {problem}" for problem in record.problems]
    if record.plan.style != "abandon" and not record.finished:
        found.append(f"{key}: still waiting for its terminal event at {record.cursor}")
    events = record.events
    ids = [e.id for e in events]
    if ids != list(range(1, len(ids) + 1)):
        pieces = [[e.id for e in piece] for piece in record.pieces]
        return [*found, f"{key}: received ids are not 1, 2, 3...: {pieces}"]
    if message is None or replay is None:
        return found
    if len(events) > len(replay):
        found.append(f"{key}: received {len(events)} events, {len(replay)} are stored")
    elif events != list(replay[: len(events)]):
        diverge = next(i for i, (a, b) in enumerate(zip(events, replay, strict=False)) if a != b)
        found.append(f"{key}: received {events[diverge]}, stored {replay[diverge]}")
    if record.has_terminal and joined_deltas(events) != message["content"]:
        found.append(f"{key}: received content differs from the message's")
    if record.cancel_accepted and message["status"] != "cancelled":
        found.append(f"{key}: cancel answered 202, yet the message ended {message['status']}")
    return found


def outcome(message: Mapping[str, Any]) -> str:
    """``success``, ``cancelled``, or ``error/<code>``."""
    error = message.get("error")
    return f"error/{error['code']}" if error else str(message["status"])


def joined_deltas(events: Iterable[Received]) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "delta")


# Interrupted answers


@dataclass(frozen=True, slots=True)
class Interrupted:
    """An answer that ended ``error``/``interrupted``: when it lived (wall-clock seconds)."""

    id: str
    created: float
    ended: float


async def interrupted_answers(database_url: str) -> list[Interrupted]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        records = await conn.fetch(
            "SELECT id::text AS id, extract(epoch FROM created_at)::float8 AS created, "
            "extract(epoch FROM updated_at)::float8 AS ended FROM messages "
            "WHERE role = 'assistant' AND status = 'error' AND error_code = 'interrupted' "
            "ORDER BY created_at"
        )
    finally:
        await conn.close()
    return [Interrupted(r["id"], r["created"], r["ended"]) for r in records]


def check_interrupted(
    answers: Sequence[Interrupted],
    silences: Mapping[int, Sequence[tuple[float, float]]],
    holders: Mapping[str, set[int]],
    longer_than: float,
    began: float,
) -> list[str]:
    """An answer may end ``interrupted`` only if its worker lost it: no server process stops
    here, so only if a process that held it went without any reply from PostgreSQL for more
    than ``longer_than`` seconds while the answer lived. ``silences``: per process (by pid), the
    proxy's stretches without a reply; ``holders``: the processes seen holding each answer (all
    of them, when it was never seen); ``began``: the run's start (wall clock), for the report."""
    found = []
    for answer in answers:
        pids = holders.get(answer.id) or set(silences)
        overlapping = [
            (start, end)
            for pid in pids
            for start, end in silences.get(pid, ())
            if start < answer.ended and end > answer.created
        ]
        longest = max((end - start for start, end in overlapping), default=0.0)
        if longest <= longer_than:
            seen = {
                pid: [f"{a - began:.1f}..{b - began:.1f}s" for a, b in silences.get(pid, ())]
                for pid in sorted(pids)
            }
            found.append(
                f"{answer.id}: ended interrupted, yet its worker reached PostgreSQL all along "
                f"while it ran, from {answer.created - began:.1f}s to {answer.ended - began:.1f}s "
                f"of the run (the longest silence then: {longest:.1f}s, not more than "
                f"{longer_than:g}s; the silences of pid {seen})"
            )
    return found


# The servers' logs

# Lines that no fault of the database may cause: the demo generator and the fake model server
# never fail, so a generator failure is a fault of the database taken for one of the answer
# (even when the answer then ends ``interrupted``, its error write having failed too); and the
# service's statements take their locks in one order, so PostgreSQL never finds a deadlock.
FORBIDDEN_LOG_LINES = {
    "generator failed": "a generator failure (a fault of the database taken for one of the answer)",
    "deadlock detected": "PostgreSQL found a deadlock between the service's statements",
}


def check_log_lines(name: str, lines: Iterable[str]) -> list[str]:
    """One sentence per kind of forbidden line in a server's log: the first, and how many."""
    found = []
    for needle, meaning in FORBIDDEN_LOG_LINES.items():
        hits = [line for line in lines if needle in line]
        if hits:
            found.append(f"{name}'s log: {len(hits)} x {meaning}; the first: {hits[0][:400]}")
    return found
