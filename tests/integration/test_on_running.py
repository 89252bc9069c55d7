"""on_running: what a generation request does when an answer of its project is running.

concurrent (the default) starts at once; reject is a 409 naming the running answer, with nothing
written; interrupt cancels the running answers and starts; enqueue reserves the pair at once and
starts the answer when every earlier answer has ended, with them in its context. The app runs
in-process here, with a scripted generator that records the context it was given; the same
promises across real server processes are in test_queue_survival.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from server.config import Settings
from server.errors import AnswerRunning
from server.generators.base import Delta, GenerationContext, Item
from server.store import Store
from tests.citus_cluster import CITUS_URL
from tests.integration.test_lost_reply import (
    ANSWERED_WITHIN,
    POLL_SECONDS,
    listening,
    steady_queue_traffic,
)
from tests.integration.test_survival import (
    Stream,
    assert_complete_log,
    deltas,
    events_url,
    eventually,
    gen_url,
    message_url,
    wire,
)
from tests.integration.test_survival import db_rows as db
from tests.integration.test_survival import start_json as start
from tests.support import (
    create_project,
    create_user,
    events_only,
    read_stream,
    running_server,
    settings_for,
)


class Scripted:
    """Answers "answer to <prompt>" in three deltas and records the context it was given (the
    history, as (role, content) pairs). A prompt starting with "hold" writes its first delta and
    then waits until the test releases it."""

    def __init__(self) -> None:
        self.contexts: dict[str, list[tuple[str, str]]] = {}
        self.gates: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def release(self, prompt: str) -> None:
        self.gates[prompt].set()

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        prompt = context.prompt
        history = await context.load_history()
        self.contexts[prompt] = [(m.role, m.content) for m in history]
        yield Delta("answer ")
        if prompt.startswith("hold"):
            await self.gates[prompt].wait()
        yield Delta("to ")
        yield Delta(prompt)


def without_poll(database_url: str, **overrides: Any) -> Settings:
    """Settings whose slow poll never comes within a test: a queued answer starts only when a
    NOTIFY (or the reserving worker itself) says that its turn came."""
    return settings_for(database_url, queue_poll_seconds=600, **overrides)


def answer(prompt: str) -> str:
    return f"answer to {prompt}"


async def status_of(client: httpx.AsyncClient, project: str, message: str) -> str:
    found: str = (await client.get(message_url(project, message))).json()["status"]
    return found


async def wait_status(
    client: httpx.AsyncClient, project: str, message: str, wanted: str, timeout: float = 10
) -> None:
    async def reached() -> bool:
        return await status_of(client, project, message) == wanted

    await eventually(reached, timeout, f"message {message} to be {wanted}", step=0.02)


async def counts(url: str, project: str) -> tuple[int, int, int]:
    """(messages, the project's last_sequence, the owner's running_generations)."""
    [row] = await db(
        url,
        "SELECT (SELECT count(*) FROM messages AS m"
        "        WHERE m.created_by = p.owner_id AND m.project_id = p.id) AS messages, "
        "p.last_sequence, coalesce(u.running_generations, 0) AS running_generations "
        "FROM projects AS p LEFT JOIN user_running AS u ON u.user_id = p.owner_id "
        "WHERE p.id = $1",
        uuid.UUID(project),
    )
    return row["messages"], row["last_sequence"], row["running_generations"]


def queued_progress(events: list[Any]) -> list[Any]:
    return [e for e in events if e.event == "progress" and e.data["stage"] == "queued"]


# Validation and the default


async def test_on_running_is_validated_in_the_body_and_the_query(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(without_poll(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        for bad in ("queue", "REJECT", "", 3, None, ["enqueue"]):
            response = await client.post(
                gen_url(project), json={"message": "hi", "on_running": bad}
            )
            if bad is None:  # null is "not given": the default policy
                assert response.status_code == 200, response.text
                continue
            if not isinstance(bad, str):  # not a string: the wrong JSON type
                assert response.status_code == 400, (bad, response.text)
                assert response.json()["code"] == "wrong_type"
                continue
            assert response.status_code == 422, (bad, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["code"] == "invalid_on_running", problem
            assert [e["field"] for e in problem["errors"]] == ["on_running"]
        url = f"/api/generate-stream?projectId={project}&message=hi&clientRequestId=k1"
        response = await client.get(url + "&onRunning=later")
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_on_running"
        # Nothing was written by the refused requests: only the one with null.
        assert (await counts(database_url, project))[:2] == (2, 2)


async def test_the_default_policy_is_the_on_running_setting(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    settings = without_poll(database_url, on_running="reject")
    async with running_server(settings, generator=script) as srv, srv.client(token) as client:
        project = await create_project(client)
        await start(client, project, "hold on")
        refused = await client.post(gen_url(project), json={"message": "second"})
        assert refused.status_code == 409 and refused.json()["code"] == "answer_running"
        # Said explicitly, the request's own policy wins over the setting.
        concurrent = await start(client, project, "third", on_running="concurrent")
        assert concurrent["assistant_message"]["sequence"] == 4
        script.release("hold on")


# reject


async def test_reject_is_a_409_naming_the_running_answer_and_writes_nothing(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        first = await start(client, project, "hold first")
        running = first["assistant_message"]
        before = await counts(database_url, project)
        assert before == (2, 2, 1)
        for how in ("json", "sse", "event-source"):
            if how == "event-source":
                response = await client.get(
                    "/api/generate-stream",
                    params={
                        "projectId": project,
                        "message": "second",
                        "clientRequestId": "es-reject",
                        "onRunning": "reject",
                    },
                )
            else:
                headers = {"Accept": "application/json"} if how == "json" else {}
                response = await client.post(
                    gen_url(project),
                    json={"message": "second", "on_running": "reject"},
                    headers=headers,
                )
            assert response.status_code == 409, (how, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["code"] == "answer_running"
            assert problem["running_message_id"] == running["id"]
            assert problem["running_sequence"] == running["sequence"] == 2
            assert await counts(database_url, project) == before, how

        script.release("hold first")
        await wait_status(client, project, running["id"], "success")
        # Nothing runs any more: reject starts like any request.
        _, frames = await read_stream(
            client, "POST", gen_url(project), json={"message": "now", "on_running": "reject"}
        )
        events = events_only(frames)
        assert events[0].data["assistant_message"]["sequence"] == 4
        assert events[-1].event == "done"


async def test_reject_sees_a_reservation_that_committed_while_it_waited_for_the_lock(
    database_url: str,
) -> None:
    """The check is atomic with the reservation: a reservation that holds the project's row
    lock when the rejecting one starts, and commits while it waits, is seen and refuses it
    (the statement's own snapshot, taken before the wait, would not see it)."""
    token = await create_user(database_url, "alice")
    async with running_server(without_poll(database_url)) as srv, srv.client(token) as client:
        project = uuid.UUID(await create_project(client))
        [owner] = await db(database_url, "SELECT owner_id FROM projects WHERE id = $1", project)
    worker = uuid.uuid4()  # the server's heartbeat expired when it stopped: a live one of our own
    args = [project, owner["owner_id"], "hi", [], None, worker, 100]
    async with Store.single(database_url) as first, Store.single(database_url) as second:
        await first.register_worker(worker, 60, "test", 0)
        async with first.db.session() as session, session.transaction():
            held = await session.fetch("reserve_pair", *args, "concurrent", None, None, None)
            waiting = asyncio.create_task(
                second.reserve_pair(
                    project_id=project,
                    owner_id=owner["owner_id"],
                    content="hi",
                    image_urls=[],
                    client_request_id=None,
                    lease_owner=worker,
                    running_cap=100,
                    on_running="reject",
                )
            )
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the second reservation waits for the project's row"
        [running] = [r for r in held if r["role"] == "assistant"]
        with pytest.raises(AnswerRunning) as refused:
            await asyncio.wait_for(waiting, 10)
    assert refused.value.sequence == 2 and refused.value.message_id == str(running["id"])
    rows = await db(database_url, "SELECT sequence FROM messages WHERE project_id = $1", project)
    assert sorted(r["sequence"] for r in rows) == [1, 2]


# interrupt


async def test_interrupt_cancels_the_running_and_queued_answers_keeping_their_text(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        head = Stream(client, "POST", gen_url(project), json={"message": "hold head"})
        await head.wait_until(lambda ev: deltas(ev) == ["answer "], 10)
        queued = await start(client, project, "hold queued", on_running="enqueue")
        queued_id = queued["assistant_message"]["id"]
        listener = Stream(client, "GET", events_url(project, queued_id))
        await listener.wait_until(lambda ev: len(queued_progress(ev)) == 1, 10)

        new = Stream(
            client, "POST", gen_url(project), json={"message": "new", "on_running": "interrupt"}
        )
        events = await new.finish(10)
        assert assert_complete_log(events).event == "done"
        assert "".join(deltas(events)) == answer("new")
        assert events[0].data["assistant_message"]["sequence"] == 6

        head_events = await head.finish(10)
        terminal = assert_complete_log(head_events)
        assert terminal.event == "cancelled"
        assert terminal.data["message"]["content"] == "answer " == "".join(deltas(head_events))
        queued_events = await listener.finish(10)
        terminal = assert_complete_log(queued_events)
        assert [e.event for e in queued_events] == ["start", "progress", "cancelled"]
        assert terminal.data["message"]["content"] == ""
        assert "new" in script.contexts and "hold queued" not in script.contexts
        assert (await counts(database_url, project))[2] == 0


async def test_interrupt_with_nothing_running_just_starts(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with (
        running_server(without_poll(database_url), generator=Scripted()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        _, frames = await read_stream(
            client, "POST", gen_url(project), json={"message": "hi", "on_running": "interrupt"}
        )
    events = events_only(frames)
    assert [e.event for e in events] == ["start", "delta", "delta", "delta", "done"]


# A repeated client_request_id resumes its own answer, whatever the policy


async def test_a_repeat_resumes_its_own_answer_under_every_policy(database_url: str) -> None:
    """EventSource reconnecting (the same URL, with Last-Event-ID) and a POST repeat find the
    request's own pair before any policy applies: reject does not refuse it because of itself,
    interrupt does not cancel itself, enqueue does not queue it again."""
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        for policy in ("concurrent", "reject", "enqueue", "interrupt"):
            project = await create_project(client, policy)
            if policy == "enqueue":  # queued behind a running answer
                await start(client, project, f"hold before {policy}")
            key, prompt = f"key-{policy}", f"hold {policy}"
            first = await start(client, project, prompt, client_request_id=key, on_running=policy)
            message = first["assistant_message"]["id"]
            before = await counts(database_url, project)
            query = {
                "projectId": project,
                "message": prompt,
                "clientRequestId": key,
                "onRunning": policy,
            }
            stream = Stream(
                client,
                "GET",
                "/api/generate-stream?" + str(httpx.QueryParams(query)),
                headers={"Last-Event-ID": "1"},
            )
            again = await client.post(
                gen_url(project),
                json={"message": prompt, "client_request_id": key, "on_running": policy},
                headers={"Accept": "application/json"},
            )
            assert again.status_code == 202, (policy, again.text)
            assert again.json()["assistant_message"]["id"] == message
            if policy == "enqueue":
                await stream.wait_until(lambda ev: len(ev) >= 1, 10)
                assert [e.event for e in stream.events] == ["progress"]
                assert await status_of(client, project, message) == "pending"
                script.release(f"hold before {policy}")
            await stream.wait_until(lambda ev: len(deltas(ev)) >= 1, 10)
            assert stream.status == 200 and stream.events[0].id == 2
            assert (await counts(database_url, project))[:2] == before[:2], policy
            assert await status_of(client, project, message) == "streaming", policy
            script.release(prompt)
            events = await stream.finish(10)
            assert events[-1].event == "done", policy
            assert events[-1].data["message"]["id"] == message


# enqueue


async def test_enqueue_waits_for_every_earlier_answer_and_sees_them_in_its_context(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        await start(client, project, "hold head")
        # An answer started concurrently after it is also before the queued ones.
        second = await start(client, project, "hold second", on_running="concurrent")
        await wait_status(client, project, second["assistant_message"]["id"], "streaming")
        queued = Stream(
            client, "POST", gen_url(project), json={"message": "third", "on_running": "enqueue"}
        )
        await queued.wait_until(lambda ev: len(ev) == 2, 10)
        fourth = Stream(
            client, "POST", gen_url(project), json={"message": "fourth", "on_running": "enqueue"}
        )
        await fourth.wait_until(lambda ev: len(ev) == 2, 10)
        for stream, ahead in ((queued, 2), (fourth, 3)):
            start_event, progress = stream.events
            assert (start_event.id, start_event.event, progress.id) == (1, "start", 2)
            assert progress.data == {
                "stage": "queued",
                "message": f"Queued behind {ahead} earlier answers",
                "percent": None,
            }
        third_id = queued.events[0].data["assistant_message"]["id"]
        fourth_id = fourth.events[0].data["assistant_message"]["id"]
        # Queued: pending (the queued event does not make it streaming), and nothing runs.
        await asyncio.sleep(0.3)
        assert await status_of(client, project, third_id) == "pending"
        assert await status_of(client, project, fourth_id) == "pending"
        assert len(queued.events) == 2 and "third" not in script.contexts

        script.release("hold second")  # the later one ends first: the head still runs
        await wait_status(client, project, second["assistant_message"]["id"], "success")
        await asyncio.sleep(0.3)
        assert await status_of(client, project, third_id) == "pending"
        script.release("hold head")

        third_events = await queued.finish(10)
        fourth_events = await fourth.finish(10)
    for events, prompt in ((third_events, "third"), (fourth_events, "fourth")):
        terminal = assert_complete_log(events)
        assert [e.event for e in events] == ["start", "progress", *["delta"] * 3, "done"]
        assert terminal.data["message"]["content"] == answer(prompt) == "".join(deltas(events))
    earlier = [
        ("user", "hold head"),
        ("assistant", answer("hold head")),
        ("user", "hold second"),
        ("assistant", answer("hold second")),
    ]
    assert script.contexts["third"] == earlier
    assert script.contexts["fourth"] == [
        *earlier,
        ("user", "third"),
        ("assistant", answer("third")),
    ]
    # Its first delta was written after every earlier answer had ended.
    rows = await db(
        database_url,
        "SELECT m.sequence, m.updated_at AS ended, m.queued_at, "
        "  (SELECT min(c.created_at) FROM event_chunks AS c WHERE c.owner_id = m.created_by "
        "   AND c.message_id = m.id AND c.kinds LIKE '%d%') AS first_delta "
        "FROM messages AS m WHERE m.project_id = $1 AND m.role = 'assistant' ORDER BY sequence",
        uuid.UUID(project),
    )
    ends = [r["ended"] for r in rows]
    for i, row in enumerate(rows[2:], 2):
        assert row["queued_at"] is not None
        assert row["first_delta"] > max(ends[:i]), f"answer {row['sequence']} started early"


async def test_enqueue_with_nothing_running_starts_at_once(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        _, frames = await read_stream(
            client, "POST", gen_url(project), json={"message": "hi", "on_running": "enqueue"}
        )
    events = events_only(frames)
    assert [e.event for e in events] == ["start", "delta", "delta", "delta", "done"]
    [row] = await db(
        database_url,
        "SELECT queued_at FROM messages WHERE project_id = $1 AND role = 'assistant'",
        uuid.UUID(project),
    )
    assert row["queued_at"] is None


async def test_cancelling_a_queued_answer_ends_it_and_the_chain_goes_on(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        head = await start(client, project, "hold head")
        doomed = await start(client, project, "doomed", on_running="enqueue")
        last = await start(client, project, "last", on_running="enqueue")
        doomed_id = doomed["assistant_message"]["id"]
        listener = Stream(client, "GET", events_url(project, doomed_id))
        await listener.wait_until(lambda ev: len(ev) == 2, 10)

        response = await client.post(f"{message_url(project, doomed_id)}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["message"]["status"] == "cancelled"
        assert response.json()["message"]["content"] == ""
        events = await listener.finish(10)
        assert wire(events[:2]) == wire(listener.events[:2])
        assert [(e.id, e.event) for e in events] == [
            (1, "start"),
            (2, "progress"),
            (3, "cancelled"),
        ]
        again = await client.post(f"{message_url(project, doomed_id)}/cancel")
        assert again.status_code == 409

        script.release("hold head")
        last_id = last["assistant_message"]["id"]
        await wait_status(client, project, last_id, "success")
        _, frames = await read_stream(client, "GET", events_url(project, last_id))
    events = events_only(frames)
    assert [e.event for e in events] == ["start", "progress", *["delta"] * 3, "done"]
    assert "doomed" not in script.contexts
    answers = [turn for turn in script.contexts["last"] if turn[0] == "assistant"]
    assert answers == [("assistant", answer("hold head"))]
    assert head["assistant_message"]["sequence"] == 2
    assert (await counts(database_url, project))[2] == 0


async def test_queued_answers_count_toward_the_running_cap(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    settings = without_poll(database_url, max_running_per_user=3)
    async with running_server(settings, generator=script) as srv, srv.client(token) as client:
        project = await create_project(client)
        await start(client, project, "hold head")
        for prompt in ("q1", "q2"):
            await start(client, project, prompt, on_running="enqueue")
        refused = await client.post(
            gen_url(project),
            json={"message": "q3", "on_running": "enqueue"},
            headers={"Accept": "application/json"},
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_running_generations"
        script.release("hold head")

        # The queue drains, and the count with it.
        async def drained() -> bool:
            return (await counts(database_url, project))[2] == 0

        await eventually(drained, 10, "the queued answers to finish")
        await start(client, project, "q3", on_running="enqueue")


# How a turn is noticed: NOTIFY, the slow poll, and a claim whose reply was lost


async def test_an_answer_queued_as_the_one_ahead_ends_is_announced_by_that_end(
    database_url: str,
) -> None:
    """The reservation that queues an answer and the flush that ends the answer ahead of it
    overlap: the reservation (its transaction held open here) has read the head as running, and
    the flush ends the head before the reservation commits. The flush's NOTIFY must still name
    the project: it looks for queued answers only once it holds the user's row, which the
    reservation holds until it commits. (Reserved outside any worker, so that no worker looks
    by itself; and no slow poll.)"""
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        head = await start(client, project, "hold head")
        await wait_status(client, project, head["assistant_message"]["id"], "streaming")
        [owner] = await db(
            database_url, "SELECT owner_id FROM projects WHERE id = $1", uuid.UUID(project)
        )
        worker = uuid.uuid4()  # a reservation needs a live heartbeat, even one that queues
        args = [uuid.UUID(project), owner["owner_id"], "queued", [], None, worker, 100]
        async with Store.single(database_url) as store:
            await store.register_worker(worker, 60, "test", 0)
        async with (
            Store.single(database_url) as store,
            store.db.session() as session,
            session.transaction(),
        ):
            rows = await session.fetch("reserve_pair", *args, "enqueue", None, None, None)
            [queued] = [r for r in rows if r["role"] == "assistant"]
            assert queued["last_event_id"] == 2, "queued behind the running head"
            script.release("hold head")  # its flush now waits for the user's row
            await asyncio.sleep(0.5)
        await wait_status(client, project, head["assistant_message"]["id"], "success")
        await wait_status(client, project, str(queued["id"]), "success", 5)


async def test_an_answer_queued_as_the_one_ahead_ends_is_started_by_its_own_worker(
    database_url: str,
) -> None:
    """The other order: the end of the head (a cancel, its transaction held open here) has
    looked for queued answers and holds the user's row when the request reserves. On one
    PostgreSQL the reservation (one statement, one snapshot) reads the head as running, queues,
    and commits only after the end: no end will announce it, the worker that queued it looks by
    itself. On Citus (sql/citus.sql) the reservation reads the running answers once it holds the
    user's row, so after the end: it does not queue. Either way the answer runs. (No slow
    poll.)"""
    token = await create_user(database_url, "alice")
    script = Scripted()
    async with (
        running_server(without_poll(database_url), generator=script) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        head = await start(client, project, "hold head")
        head_id = uuid.UUID(head["assistant_message"]["id"])
        await wait_status(client, project, str(head_id), "streaming")
        [owner] = await db(
            database_url, "SELECT owner_id FROM projects WHERE id = $1", uuid.UUID(project)
        )
        async with (
            Store.single(database_url) as store,
            store.db.session() as session,
            session.transaction(),
        ):
            ended = await session.fetch(
                "close_message",
                owner["owner_id"],
                uuid.UUID(project),
                head_id,
                "cancelled",
                None,
                None,
                owner["owner_id"],
            )
            assert len(ended) == 1
            request = asyncio.create_task(start(client, project, "queued", on_running="enqueue"))
            await asyncio.sleep(0.5)
            assert not request.done(), "the reservation waits for the user's row"
        queued = (await request)["assistant_message"]
        [row] = await db(
            database_url, "SELECT queued_at FROM messages WHERE id = $1", uuid.UUID(queued["id"])
        )
        if CITUS_URL:
            assert row["queued_at"] is None, "read after the head's end: not queued"
        else:
            assert row["queued_at"] is not None, "it was queued behind the head"
        await wait_status(client, project, queued["id"], "success", 5)
        script.release("hold head")


async def test_a_turn_that_came_without_a_notify_is_found_by_the_slow_poll_under_steady_traffic(
    database_url: str,
) -> None:
    """The slow poll comes whatever else wakes the queue: here steady traffic of another project
    wakes it 20 times per poll. Regression (Reliability II, item 3): every wake-up put the slow
    poll off, and it never came."""
    token = await create_user(database_url, "alice")
    script = Scripted()
    settings = settings_for(database_url, queue_poll_seconds=POLL_SECONDS)
    async with running_server(settings, generator=script) as srv, srv.client(token) as client:
        project = await create_project(client)
        busy = await create_project(client, "the busy one")
        await listening(srv.services.worker)
        head = await start(client, project, "hold head")
        queued = await start(client, project, "queued", on_running="enqueue")
        await wait_status(client, project, head["assistant_message"]["id"], "streaming")
        async with steady_queue_traffic(database_url, busy):
            # The head ends without any NOTIFY (as if every notification had been lost).
            await db(
                database_url,
                "UPDATE messages SET status = 'error', error_code = 'gone', "
                "error_message = 'gone', lease_owner = NULL WHERE id = $1",
                uuid.UUID(head["assistant_message"]["id"]),
            )
            await wait_status(
                client, project, queued["assistant_message"]["id"], "success", ANSWERED_WITHIN
            )
        script.release("hold head")


async def test_a_claim_whose_reply_was_lost_is_started_by_its_worker_under_steady_traffic(
    database_url: str,
) -> None:
    """As the slow poll above: steady traffic of another project must not put it off."""
    token = await create_user(database_url, "alice")
    script = Scripted()
    settings = settings_for(database_url, queue_poll_seconds=POLL_SECONDS)
    async with running_server(settings, generator=script) as srv, srv.client(token) as client:
        project = await create_project(client)
        busy = await create_project(client, "the busy one")
        await listening(srv.services.worker)
        head = await start(client, project, "hold head")
        queued = await start(client, project, "queued", on_running="enqueue")
        queued_id = queued["assistant_message"]["id"]
        await wait_status(client, project, head["assistant_message"]["id"], "streaming")
        # In one transaction: the head ends, and the queued answer is claimed by this worker,
        # as a claim whose COMMIT went through and whose reply never came back would leave it.
        worker = srv.services.runner.worker()
        async with steady_queue_traffic(database_url, busy):
            conn = await asyncpg.connect(database_url)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE messages SET status = 'error', error_code = 'gone', "
                        "error_message = 'gone', lease_owner = NULL WHERE id = $1",
                        uuid.UUID(head["assistant_message"]["id"]),
                    )
                    await conn.execute(
                        "UPDATE messages SET lease_owner = $1 WHERE id = $2",
                        worker,
                        uuid.UUID(queued_id),
                    )
            finally:
                await conn.close()
            await wait_status(client, project, queued_id, "success", ANSWERED_WITHIN)
        _, frames = await read_stream(client, "GET", events_url(project, queued_id))
        script.release("hold head")
    events = events_only(frames)
    assert [e.event for e in events] == ["start", "progress", *["delta"] * 3, "done"]
    assert_complete_log(events)


# Draining


async def test_draining_leaves_queued_answers_queued_for_another_worker(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    draining = without_poll(database_url, shutdown_grace_seconds=0.5)
    async with (
        running_server(without_poll(database_url), generator=script) as other,
        other.client(token) as on_other,
    ):
        async with running_server(draining, generator=script) as srv, srv.client(token) as client:
            project = await create_project(client)
            head = await start(client, project, "hold head")
            queued = await start(client, project, "queued", on_running="enqueue")
            await wait_status(client, project, head["assistant_message"]["id"], "streaming")
            # The worker running the head drains: the head is cut (server_shutdown) and the
            # queued answer's turn comes while it drains; it must not take it, nor fail it.
        found = (await on_other.get(message_url(project, head["assistant_message"]["id"]))).json()
        assert found["status"] == "error" and found["error"]["code"] == "server_shutdown"
        queued_id = queued["assistant_message"]["id"]
        await wait_status(on_other, project, queued_id, "success")
        _, frames = await read_stream(on_other, "GET", events_url(project, queued_id))
        script.release("hold head")
    events = events_only(frames)
    assert [e.event for e in events] == ["start", "progress", *["delta"] * 3, "done"]


# Mixed policies, real concurrency, two app instances on one database


async def test_concurrent_enqueue_on_two_instances_keeps_order_and_context(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    script = Scripted()
    settings = without_poll(database_url, history_messages=1000)
    async with (
        running_server(settings, generator=script) as one,
        running_server(settings, generator=script) as two,
        one.client(token) as c1,
        two.client(token) as c2,
    ):
        project = await create_project(c1)

        async def send(n: int) -> list[Any]:
            client = (c1, c2)[n % 2]
            _, frames = await read_stream(
                client,
                "POST",
                gen_url(project),
                json={"message": f"m{n}", "on_running": "enqueue"},
            )
            return events_only(frames)

        results = await asyncio.gather(*(send(n) for n in range(24)))
    by_sequence = {}
    for events in results:
        terminal = assert_complete_log(events)
        assert terminal.event == "done"
        assert terminal.data["message"]["content"] == "".join(deltas(events))
        start_data = events[0].data
        by_sequence[start_data["assistant_message"]["sequence"]] = start_data["user_message"]
    assert sorted(by_sequence) == list(range(2, 49, 2))
    prompts = [by_sequence[s]["content"] for s in sorted(by_sequence)]
    for i, prompt in enumerate(prompts):
        expected = []
        for earlier in prompts[:i]:
            expected += [("user", earlier), ("assistant", answer(earlier))]
        assert script.contexts[prompt] == expected, f"the context of {prompt}"
