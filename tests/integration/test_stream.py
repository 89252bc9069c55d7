"""The SSE stream on the wire: format, numbering, terminal event, content = joined deltas."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg

from server.generators.base import Delta, GenerationContext, GeneratorError, Item, Progress
from server.generators.demo import demo_answer
from tests.support import (
    GatedGenerator,
    create_project,
    create_user,
    events_only,
    generate,
    read_stream,
    running_server,
    settings_for,
)

MESSAGE = "Hi there, \u00e9t\u00e9 \U0001f600"  # raw UTF-8 on the wire, not \\u escapes


async def test_stream_wire_format(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        response, frames = await read_stream(
            client, "POST", f"/api/projects/{project}/generations", json={"message": MESSAGE}
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert frames[0].retry is not None and frames[0].event is None, "the stream opens with retry:"
    events = events_only(frames)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].event == "start"
    assert [e.event for e in events[1:3]] == ["progress", "progress"]
    assert {e.event for e in events[3:-1]} == {"delta"}
    assert events[-1].event == "done"
    for event in events:
        assert len(event.data_lines) == 1
        line = event.data_lines[0]
        compact = json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)
        assert line == compact, f"not compact JSON: {line}"
    start = events[0].data
    assert start["user_message"]["sequence"] == 1
    assert start["assistant_message"]["sequence"] == 2
    assert start["assistant_message"]["status"] == "pending"
    done = events[-1].data["message"]
    joined = "".join(e.data["text"] for e in events if e.event == "delta")
    assert done["status"] == "success"
    assert done["content"] == joined == demo_answer(MESSAGE)


async def test_finished_content_in_history_equals_joined_deltas(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=40)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        events = await generate(client, project, "A longer prompt with emoji \U0001f600 and \u05e9")
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    joined = "".join(e.data["text"] for e in events if e.event == "delta")
    assert history[1]["content"] == joined
    assert history[1]["status"] == "success"
    assert "\U0001f600" in joined


async def test_placeholder_is_committed_before_start_arrives(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=5, demo_delta_ms=200)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        url = f"/api/projects/{project}/generations"
        async with client.stream("POST", url, json={"message": "slow"}) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data:"):
                    break  # the start event's data: nothing else has been read
            # Straight from the database, on another connection:
            conn = await asyncpg.connect(database_url)
            try:
                row = await conn.fetchrow(
                    "SELECT status, sequence FROM messages WHERE project_id = $1 "
                    "AND role = 'assistant'",
                    uuid.UUID(project),
                )
            finally:
                await conn.close()
            assert row is not None and row["sequence"] == 2
            assert row["status"] in ("pending", "streaming")
            # And through history, while the answer is still being written:
            page = (await client.get(f"/api/projects/{project}/messages")).json()
            assert [m["sequence"] for m in page["messages"]] == [1, 2]
            assert page["messages"][1]["status"] in ("pending", "streaming")
            async for _ in lines:
                pass
        final = (await client.get(f"/api/projects/{project}/messages")).json()["messages"][1]
        assert final["status"] == "success"


async def test_pings_are_sent_while_no_event_is_due(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=2, demo_delta_ms=700, ping_seconds=0.2)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        _response, frames = await read_stream(
            client, "POST", f"/api/projects/{project}/generations", json={"message": "ping me"}
        )
    pings = [f for f in frames if f.comments == ["ping"] and f.event is None]
    assert len(pings) >= 3
    assert events_only(frames)[-1].event == "done"


class FailingGenerator:
    """Writes two pieces, then fails: the answer must end as an error event, partial text kept."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Progress("writing", "about to fail", None)
        yield Delta("partial ")
        await asyncio.sleep(0)
        yield Delta("answer")
        raise self.error


async def test_generator_exception_becomes_error_event(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    generator = FailingGenerator(RuntimeError("secret internal detail"))
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        events = await generate(client, project, "fail please")
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    last = events[-1]
    assert last.event == "error"
    assert last.data["error"]["code"] == "generator_failed"
    assert "secret" not in last.data["error"]["message"]
    assert last.data["message"]["status"] == "error"
    assert last.data["message"]["content"] == "partial answer"
    assert history[1]["status"] == "error"
    assert history[1]["content"] == "partial answer"
    assert history[1]["error"]["code"] == "generator_failed"


async def test_generator_error_keeps_its_code(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    generator = FailingGenerator(GeneratorError("upstream_error", "the model said no"))
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        events = await generate(client, project, "fail please")
    assert events[-1].data["error"] == {"code": "upstream_error", "message": "the model said no"}


class CleanupGenerator:
    """Writes one piece, then waits; its cleanup needs an await of its own (as closing an
    upstream connection does)."""

    def __init__(self) -> None:
        self.cleaned_up = asyncio.Event()

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        try:
            yield Delta("one piece")
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)
            self.cleaned_up.set()


async def test_repeated_stops_do_not_cut_a_generators_cleanup_short(database_url: str) -> None:
    """Regression: cancel, its NOTIFY and a fenced flush can each stop a generation within
    milliseconds; a second cancellation landed inside the generator's cleanup."""
    token = await create_user(database_url, "alice")
    generator = CleanupGenerator()
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        accepted = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "x"},
            headers={"Accept": "application/json"},
        )
        message_id = uuid.UUID(accepted.json()["assistant_message"]["id"])
        runner = srv.services.runner
        log = runner.local_log(message_id)
        assert log is not None
        while not log.parts:  # noqa: ASYNC110 (the log has no event for "has a part")
            await asyncio.sleep(0.01)
        for _ in range(3):
            runner.abandon(message_id)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(generator.cleaned_up.wait(), 2)


async def test_a_listener_that_hangs_up_frees_its_stream_at_once(database_url: str) -> None:
    """Nothing is sent to an idle listener for PING_SECONDS: its hanging up must be noticed by
    the stream's disconnect watch (server/disconnect.py), not by a failed write."""
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()
    settings = settings_for(database_url, ping_seconds=60)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        response = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "hold"},
            headers={"Accept": "application/json"},
        )
        url = response.json()["events_url"]
        streams = srv.services.worker.streams
        for _ in range(3):
            async with client.stream("GET", url) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        break
                assert streams.open == 1
            # The client closed the connection; the server's stream ends within moments.
            for _ in range(100):
                if streams.open == 0:
                    break
                await asyncio.sleep(0.01)
            assert streams.open == 0, "a stream outlived its client"
        generator.gate.set()
