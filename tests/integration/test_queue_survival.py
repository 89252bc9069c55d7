"""on_running across real server processes (``python -m server``) on one database: mixed
policies at once on one project, and the queue going on when the worker running its head is
killed. The invariants of API.md hold under every policy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest

from server.generators.demo import demo_answer
from server.store import Store
from tests.integration.test_survival import (
    Stream,
    assert_complete_log,
    db_rows,
    deltas,
    events_url,
    eventually,
    gen_url,
    message_url,
    replay,
    running_messages,
    start_all,
    start_json,
    wire,
)
from tests.processes import Spawn
from tests.support import create_project, create_user

pytestmark = pytest.mark.slow

# The end of each assistant message, and when its first delta was written (database clock).
TIMELINE = """
SELECT m.sequence, m.status, m.content, m.error_code, m.updated_at AS ended, m.queued_at,
       (SELECT min(c.created_at) FROM event_chunks AS c
        WHERE c.owner_id = m.created_by AND c.message_id = m.id AND c.kinds LIKE '%d%')
           AS first_delta
FROM messages AS m
WHERE m.project_id = $1 AND m.role = 'assistant'
ORDER BY m.sequence
"""


async def test_mixed_policies_on_one_project_across_two_processes(
    database_url: str, spawn: Spawn
) -> None:
    token = await create_user(database_url, "alice")
    settings = {
        "demo_deltas": 6,
        "demo_delta_ms": 40,
        "max_running_per_user": 1000,
        "max_streams_per_user": 100_000,
        "queue_poll_seconds": 600,  # turns are announced by NOTIFY alone
    }
    a, b = spawn("A", database_url, **settings), spawn("B", database_url, **settings)
    await start_all(a, b)
    cycle = ["enqueue", "concurrent", "enqueue", "reject", "enqueue"] * 2
    cycle[7] = "interrupt"
    mixed = 40
    # Then a burst of enqueued answers alone, sent at once: one runs, the rest wait for it and
    # run in turn (in the mixed part an interrupt may cut every queued answer before it runs).
    policies = [cycle[n % len(cycle)] for n in range(mixed)] + ["enqueue"] * 4
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)

        async def one(n: int) -> tuple[str, str, Stream]:
            if n < mixed:
                await asyncio.sleep((n * 0.037) % 0.6)  # overlapping, in no particular order
            client = (on_a, on_b)[n % 2]
            body = {"message": f"message {n}", "on_running": policies[n]}
            stream = Stream(client, "POST", gen_url(project), json=body)
            await stream.finish(60)
            return f"message {n}", policies[n], stream

        results = await asyncio.gather(*(one(n) for n in range(mixed)))
        results += await asyncio.gather(*(one(n) for n in range(mixed, len(policies))))

        async def idle() -> bool:
            return await running_messages(database_url) == []

        for _ in range(100):
            if await idle():
                break
            await asyncio.sleep(0.1)
        assert await idle(), "answers still running"

        by_sequence: dict[int, tuple[str, str, list[Any]]] = {}
        refused: list[dict[str, Any]] = []
        for prompt, policy, stream in results:
            if stream.status == 409:
                assert policy == "reject"
                assert stream.headers is not None
                assert stream.headers["content-type"] == "application/problem+json"
                refused.append(json.loads(stream.rest))
                continue
            assert stream.status == 200, (prompt, policy, stream.status)
            events = stream.events
            terminal = assert_complete_log(events)
            content = terminal.data["message"]["content"]
            assert content == "".join(deltas(events)), prompt
            assert demo_answer(prompt).startswith(content)
            if terminal.event == "done":
                assert content == demo_answer(prompt)
            else:
                assert terminal.event == "cancelled", (prompt, wire(events[-2:]))
            queued = [e for e in events if e.event == "progress" and e.data["stage"] == "queued"]
            assert len(queued) <= 1 and (not queued or queued[0].id == 2), prompt
            assert not queued or policy == "enqueue"
            sequence = events[0].data["assistant_message"]["sequence"]
            by_sequence[sequence] = (prompt, policy, events)
            # Every stream replays the same from the table, on either process.
            url = events_url(project, terminal.data["message"]["id"])
            for client in (on_a, on_b):
                _, replayed = await replay(client, url)
                assert wire(replayed) == wire(events), prompt

    # Invariants 1 and 2: 1..2n without gaps, pairs (2k-1, 2k); the refused wrote nothing.
    rows = await db_rows(
        database_url,
        "SELECT id, sequence, role, status, content FROM messages WHERE project_id = $1 "
        "ORDER BY sequence",
        uuid.UUID(project),
    )
    assert [r["sequence"] for r in rows] == list(range(1, 2 * len(by_sequence) + 1))
    assert sorted(by_sequence) == list(range(2, 2 * len(by_sequence) + 1, 2))
    assert [r["role"] for r in rows] == ["user", "assistant"] * len(by_sequence)
    # A refusal names a running answer of the project (it has ended since).
    sequence_of = {str(r["id"]): r["sequence"] for r in rows if r["role"] == "assistant"}
    for problem in refused:
        assert problem["code"] == "answer_running"
        assert sequence_of[problem["running_message_id"]] == problem["running_sequence"]

    timeline = await db_rows(database_url, TIMELINE, uuid.UUID(project))
    ends = {r["sequence"]: r["ended"] for r in timeline}
    waited = interrupts = 0
    for row in timeline:
        prompt, policy, events = by_sequence[row["sequence"]]
        assert row["status"] in ("success", "cancelled"), (prompt, row["status"])
        assert row["content"] == events[-1].data["message"]["content"]
        earlier = [ends[s] for s in ends if s < row["sequence"]]
        if policy == "enqueue" and row["first_delta"] is not None and earlier:
            # An enqueued answer starts only after every earlier answer has ended.
            assert row["first_delta"] > max(earlier), f"{prompt} started before an earlier end"
            waited += row["queued_at"] is not None
        if policy == "interrupt" and row["first_delta"] is not None:
            # Every earlier answer had ended when an interrupting answer wrote its first delta:
            # it cancels them before it starts. (An interrupting answer that a later one
            # cancelled before it started wrote nothing: the later one ends the rest.)
            interrupts += 1
            outlived = {
                s: e for s, e in ends.items() if s < row["sequence"] and e > row["first_delta"]
            }
            assert not outlived, (prompt, row["sequence"], row["first_delta"], outlived)
    # The run met every case: refusals, queued answers, answers cancelled by an interrupt.
    statuses = [row["status"] for row in timeline]
    queued_ones = [row for row in timeline if row["queued_at"] is not None]
    cut = statuses.count("cancelled")
    print(f"{len(refused)} refused, {len(queued_ones)} queued ({waited} ran), {cut} cut")
    assert refused and waited >= 3 and cut and interrupts


async def test_kill_9_of_the_head_the_queue_goes_on_on_the_survivor(
    database_url: str, spawn: Spawn
) -> None:
    token = await create_user(database_url, "alice")
    lease = 1.5
    # A writes a long head; B's answers are short.
    # No slow poll within the test: the next answer's turn is announced by the reaper's end.
    a = spawn("A", database_url, demo_deltas=100, demo_delta_ms=100, lease_seconds=lease)
    b = spawn(
        "B",
        database_url,
        demo_deltas=5,
        demo_delta_ms=40,
        lease_seconds=lease,
        queue_poll_seconds=600,
    )
    await start_all(a, b)
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)
        head_pair = await start_json(on_a, project, "The head", on_running="enqueue")
        head = head_pair["assistant_message"]
        listeners = {"head": Stream(on_b, "GET", events_url(project, head["id"]))}
        await listeners["head"].wait_until(lambda ev: len(deltas(ev)) >= 2, 10)
        # Queued behind it: one reserved through A (its worker dies too), one through B.
        queued = {
            "first": await start_json(on_a, project, "First in the queue", on_running="enqueue"),
            "second": await start_json(on_b, project, "Second in the queue", on_running="enqueue"),
        }
        for name, pair in queued.items():
            message = pair["assistant_message"]["id"]
            listeners[name] = Stream(on_b, "GET", events_url(project, message))
            await listeners[name].wait_until(lambda ev: len(ev) == 2, 10)

        a.kill()
        events = await listeners["head"].finish(lease + 6)
        terminal = assert_complete_log(events)
        assert terminal.event == "error" and terminal.data["error"]["code"] == "interrupted"
        assert terminal.data["message"]["content"] == "".join(deltas(events))
        for name, prompt, ahead in (
            ("first", "First in the queue", 1),
            ("second", "Second in the queue", 2),
        ):
            events = await listeners[name].finish(15)
            terminal = assert_complete_log(events)
            assert [e.event for e in events[:2]] == ["start", "progress"]
            assert events[1].data["message"] == (
                f"Queued behind {ahead} earlier answer{'s' if ahead > 1 else ''}"
            )
            assert terminal.event == "done", (name, wire(events[-2:]))
            assert terminal.data["message"]["content"] == demo_answer(prompt)
            assert "".join(deltas(events)) == demo_answer(prompt)
            found = await on_b.get(message_url(project, queued[name]["assistant_message"]["id"]))
            assert found.json()["status"] == "success"
    timeline = await db_rows(database_url, TIMELINE, uuid.UUID(project))
    assert [r["status"] for r in timeline] == ["error", "success", "success"]
    assert timeline[0]["error_code"] == "interrupted"
    assert timeline[1]["first_delta"] > timeline[0]["ended"]
    assert timeline[2]["first_delta"] > timeline[1]["ended"]
    assert await running_messages(database_url) == []
    assert b.running


async def test_a_lost_reservation_on_a_busy_process_is_started_by_the_slow_poll(
    database_url: str, spawn: Spawn
) -> None:
    """A real process whose queue is woken all the time, as the page's `enqueue` traffic does:
    requests queue behind a long answer of another project, and each one pokes the queue.
    Meanwhile a reservation of this process whose reply was lost (committed, leased to it,
    started by nobody) waits for its slow poll. Regression (Reliability II, item 3): every poke
    put the slow poll off, and the answer stayed `pending` for good."""
    token = await create_user(database_url, "alice")
    poll = 1.0
    a = spawn(
        "A",
        database_url,
        demo_deltas=400,
        demo_delta_ms=50,  # the busy project's head runs for 20 s: what follows it queues
        queue_poll_seconds=poll,
        max_running_per_user=100_000,
        rate_per_minute=1_000_000,
        rate_burst=1_000_000,
    )
    await start_all(a)
    async with a.client(token) as client:
        project = await create_project(client)
        busy = await create_project(client, "the busy one")
        await start_json(client, busy, "The long one")
        sent = 0

        async def page_traffic() -> None:
            nonlocal sent
            while True:
                await start_json(client, busy, f"queued {sent}", on_running="enqueue")
                sent += 1
                await asyncio.sleep(poll / 20)

        async def going() -> bool:
            return sent >= 5

        traffic = asyncio.create_task(page_traffic())
        try:
            await eventually(going, 20, "the traffic to get going")
            [worker] = await db_rows(database_url, "SELECT id FROM workers WHERE pid = $1", a.pid)
            [owner] = await db_rows(
                database_url, "SELECT owner_id FROM projects WHERE id = $1", uuid.UUID(project)
            )
            async with Store.single(database_url) as store:
                reservation = await store.reserve_pair(
                    project_id=uuid.UUID(project),
                    owner_id=owner["owner_id"],
                    content="Lost in the reply",
                    image_urls=[],
                    client_request_id=None,
                    lease_owner=worker["id"],
                    running_cap=100_000,
                    on_running="concurrent",
                )
            assert reservation is not None and not reservation.queued
            lost = reservation.pair.assistant.message.id

            async def started() -> bool:
                found = await client.get(message_url(project, str(lost)))
                return bool(found.json()["status"] != "pending")

            await eventually(started, 20, "the lost reservation to start")
        finally:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
    assert a.running
