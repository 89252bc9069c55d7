"""A model's reasoning: streamed as `reasoning` events in the answer's one numbered log, stored
and resumed exactly once like deltas, kept on the message as `reasoning` (apart from `content`),
never sent back upstream; and its `reasoning_tokens` kept in `usage`.

Through the whole app in front of the fake OpenAI-compatible server (tests/fake_openai.py), for
both names servers give the field (`reasoning_content`: vLLM, llama.cpp, DeepSeek; `reasoning`:
OpenRouter, Ollama); and the demo generator's `/think`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from server.generators.demo import demo_answer, demo_reasoning
from tests.fake_openai import Exchange, FakeModel, Reply, answer
from tests.integration.test_openai_generator import SYSTEM_PROMPT, openai_settings
from tests.support import (
    Frame,
    create_project,
    create_user,
    events_only,
    generate,
    parse_frames,
    read_stream,
    running_server,
    settings_for,
)

FIELDS = ["reasoning_content", "reasoning"]
THOUGHTS = ["The user greets me", ". I should ", "greet them back."]
PIECES = ["Hel", "lo!"]
# As OpenAI reports it, with details our usage does not keep (they are left out).
USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 30,
    "total_tokens": 39,
    "completion_tokens_details": {"reasoning_tokens": 25, "accepted_prediction_tokens": 0},
}
KEPT_USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 30,
    "completion_tokens_details": {"reasoning_tokens": 25},
}


def reasoning_answer(
    field: str,
    thoughts: list[str] = THOUGHTS,
    pieces: list[str] = PIECES,
    *,
    usage: Any = None,
    thought: asyncio.Event | None = None,
    gate: asyncio.Event | None = None,
) -> Reply:
    """The reasoning in ``field``, then the content (with ``field`` null beside it, as vLLM
    sends it), then the usage. With ``gate``: sets ``thought`` after the reasoning, and waits
    for ``gate`` before the content (an answer held at the boundary)."""

    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(role="assistant", content="")
        for text in thoughts:
            await x.delta(**{field: text})
        if gate is not None:
            assert thought is not None
            thought.set()
            await gate.wait()
        for piece in pieces:
            await x.delta(piece, **{field: None})
        await x.delta(finish_reason="stop")
        if usage is not None and x.asks_for_usage:
            await x.usage(usage)
        await x.done()

    return reply


def wire(frames: list[Frame]) -> list[tuple[int | None, str | None, list[str]]]:
    return [(f.id, f.event, f.data_lines) for f in frames]


def texts(frames: list[Frame], name: str) -> list[str]:
    return [f.data["text"] for f in frames if f.event == name]


async def resume(client: httpx.AsyncClient, url: str, cursor: int) -> list[Frame]:
    response, frames = await read_stream(client, "GET", url, headers={"Last-Event-ID": str(cursor)})
    assert response.status_code == 200, (cursor, response.text)
    return events_only(frames)


@pytest.mark.parametrize("field", FIELDS)
async def test_reasoning_streams_as_events_is_stored_apart_and_resumes_exactly_once(
    database_url: str, field: str
) -> None:
    token = await create_user(database_url, "alice")
    async with FakeModel([reasoning_answer(field, usage=USAGE)]) as model:
        settings = openai_settings(database_url, model.base_url)
        async with (
            running_server(settings) as a,
            running_server(settings) as b,
            a.client(token) as on_a,
            b.client(token) as on_b,
        ):
            project = await create_project(on_a)
            full = await generate(on_a, project, "Hi")
            final = full[-1].data["message"]
            url = f"/api/projects/{project}/messages/{final['id']}/events"
            history = (await on_b.get(f"/api/projects/{project}/messages")).json()["messages"]
            got = (await on_b.get(f"/api/projects/{project}/messages/{final['id']}")).json()
            # Every cursor, the boundaries between reasoning and text included, on the writer
            # and on a worker that reads the table: each missing event once, in order.
            resumed = {
                (name, cursor): await resume(client, url, cursor)
                for name, client in (("a", on_a), ("b", on_b))
                for cursor in range(len(full))
            }
    names = [f.event for f in full]
    assert names == [
        "start",
        "progress",
        "progress",
        *["reasoning"] * len(THOUGHTS),
        "progress",
        *["delta"] * len(PIECES),
        "done",
    ]
    assert [f.data["stage"] for f in full if f.event == "progress"] == [
        "contacting model",
        "reasoning",
        "writing",
    ]
    assert [f.id for f in full] == list(range(1, len(full) + 1)), "one sequence for all events"
    assert texts(full, "reasoning") == THOUGHTS
    assert texts(full, "delta") == PIECES
    assert final["content"] == "".join(PIECES), "reasoning stays out of the content"
    assert final["reasoning"] == "".join(THOUGHTS)
    assert final["usage"] == KEPT_USAGE
    assert isinstance(final["reasoning_ms"], int) and final["reasoning_ms"] >= 0
    assert full[0].data["assistant_message"]["reasoning"] is None, "start: as created"
    for stored in (history[1], got):
        assert (stored["content"], stored["reasoning"], stored["usage"]) == (
            final["content"],
            final["reasoning"],
            KEPT_USAGE,
        )
        assert stored["reasoning_ms"] == final["reasoning_ms"]
    assert history[0]["reasoning"] is None, "a user message has none"
    for (name, cursor), frames in resumed.items():
        assert wire(frames) == wire(full[cursor:]), (name, cursor)


async def test_a_running_answers_reasoning_so_far_is_read_and_resumed_across_the_boundary(
    database_url: str,
) -> None:
    """Held between its reasoning and its text: the message reads with the reasoning so far
    and no content; a listener on another worker resumes from inside the reasoning and gets
    every later event once, reasoning then text."""
    token = await create_user(database_url, "alice")
    thought, gate = asyncio.Event(), asyncio.Event()
    reply = reasoning_answer("reasoning_content", thought=thought, gate=gate)
    async with FakeModel([reply]) as model:
        settings = openai_settings(database_url, model.base_url, openai_idle_seconds=30.0)
        async with (
            running_server(settings) as a,
            running_server(settings) as b,
            a.client(token) as on_a,
            b.client(token) as on_b,
        ):
            project = await create_project(on_a)
            buffer = b""
            listener: asyncio.Task[list[Frame]] | None = None
            async with on_a.stream(
                "POST", f"/api/projects/{project}/generations", json={"message": "Hi"}
            ) as response:
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    if listener is not None:
                        continue
                    seen = events_only(parse_frames(buffer[: buffer.rfind(b"\n\n") + 2]))
                    if texts(seen, "reasoning") != THOUGHTS:
                        continue
                    # Every reasoning event is stored (a listener sees only stored events).
                    message_id = seen[0].data["assistant_message"]["id"]
                    running = (
                        await on_b.get(f"/api/projects/{project}/messages/{message_id}")
                    ).json()
                    history = (await on_b.get(f"/api/projects/{project}/messages")).json()
                    url = f"/api/projects/{project}/messages/{message_id}/events"
                    cursor = next(f.id for f in seen if f.event == "reasoning")  # the first
                    assert cursor is not None
                    listener = asyncio.create_task(resume(on_b, url, cursor))
                    gate.set()
            assert listener is not None
            tail = await asyncio.wait_for(listener, 30)  # a bound on a hang only
    full = events_only(parse_frames(buffer))
    assert full[-1].event == "done"
    assert (running["status"], running["content"]) == ("streaming", "")
    assert running["reasoning"] == "".join(THOUGHTS)
    assert running["reasoning_ms"] is None, "known once the answer ends"
    assert history["messages"][1]["reasoning"] == "".join(THOUGHTS)
    assert wire(tail) == wire(full[cursor:])
    assert texts(tail, "reasoning") == THOUGHTS[1:]
    assert texts(tail, "delta") == PIECES


async def test_a_cancelled_answer_keeps_the_reasoning_it_streamed(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    thought, gate = asyncio.Event(), asyncio.Event()
    reply = reasoning_answer("reasoning", thought=thought, gate=gate)
    async with FakeModel([reply]) as model:
        settings = openai_settings(database_url, model.base_url, openai_idle_seconds=30.0)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            buffer = b""
            async with client.stream(
                "POST", f"/api/projects/{project}/generations", json={"message": "Hi"}
            ) as response:
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    seen = events_only(parse_frames(buffer[: buffer.rfind(b"\n\n") + 2]))
                    if texts(seen, "reasoning") == THOUGHTS:
                        message_id = seen[0].data["assistant_message"]["id"]
                        cancel = f"/api/projects/{project}/messages/{message_id}/cancel"
                        cancelled = await client.post(cancel)
                        break
            got = (await client.get(f"/api/projects/{project}/messages/{message_id}")).json()
            gate.set()
    assert cancelled.status_code == 202, cancelled.text
    for message in (cancelled.json()["message"], got):
        assert message["status"] == "cancelled"
        assert (message["content"], message["reasoning"]) == ("", "".join(THOUGHTS))
        assert (message["usage"], message["reasoning_ms"]) == (None, None)


async def test_the_context_of_later_turns_leaves_the_reasoning_out(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    replies = [reasoning_answer("reasoning_content"), answer("Fine.")]
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            await generate(client, project, "Hi")
            await generate(client, project, "How are you?")
    assert model.requests[1].body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "".join(PIECES)},
        {"role": "user", "content": "How are you?"},
    ]
    assert "greet them back" not in json.dumps(model.requests[1].body)


async def test_a_server_that_sends_both_fields_is_read_once(database_url: str) -> None:
    """A server in transition between the names sends the same text in both."""

    async def both(x: Exchange) -> None:
        await x.head()
        for text in THOUGHTS:
            await x.delta(reasoning_content=text, reasoning=text)
        await x.delta("Hi.", reasoning_content=None, reasoning=None)
        await x.delta(finish_reason="stop")
        await x.done()

    token = await create_user(database_url, "alice")
    async with FakeModel([both]) as model:
        settings = openai_settings(database_url, model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            frames = await generate(client, await create_project(client), "Hi")
    assert texts(frames, "reasoning") == THOUGHTS
    assert frames[-1].data["message"]["reasoning"] == "".join(THOUGHTS)


@pytest.mark.parametrize(
    ("usage", "kept"),
    [
        # No details, or details without a usable count: the counts are kept, without details.
        (
            {"prompt_tokens": 1, "completion_tokens": 2},
            {"prompt_tokens": 1, "completion_tokens": 2},
        ),
        (
            {"prompt_tokens": 1, "completion_tokens": 2, "completion_tokens_details": None},
            {"prompt_tokens": 1, "completion_tokens": 2},
        ),
        (
            {"prompt_tokens": 1, "completion_tokens": 2, "completion_tokens_details": {}},
            {"prompt_tokens": 1, "completion_tokens": 2},
        ),
        (
            {
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "completion_tokens_details": {"reasoning_tokens": "2"},
            },
            {"prompt_tokens": 1, "completion_tokens": 2},
        ),
        (
            {
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "completion_tokens_details": {"reasoning_tokens": 2**40},
            },
            {"prompt_tokens": 1, "completion_tokens": 2},
        ),
        (
            {
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            {
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        ),
    ],
)
async def test_reasoning_tokens_are_kept_when_reported(
    database_url: str, usage: Any, kept: Any
) -> None:
    token = await create_user(database_url, "alice")
    async with FakeModel([answer("Hi.", usage=usage)]) as model:
        settings = openai_settings(database_url, model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            frames = await generate(client, project, "Hi")
            history = (await client.get(f"/api/projects/{project}/messages")).json()
    for message in (frames[-1].data["message"], history["messages"][1]):
        assert (message["usage"], message["reasoning"], message["reasoning_ms"]) == (
            kept,
            None,
            None,
        )


async def test_the_demo_thinks_first_for_a_message_that_starts_with_think(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=4, demo_delta_ms=1)
    prompt = "/think what is up"
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        thinking = await generate(client, project, prompt)
        plain = await generate(client, project, "what is up")
    names = [f.event for f in thinking]
    assert names.index("reasoning") < names.index("delta")
    assert "reasoning" not in names[names.index("delta") :]
    message = thinking[-1].data["message"]
    assert message["reasoning"] == "".join(texts(thinking, "reasoning")) == demo_reasoning(prompt)
    assert message["content"] == demo_answer(prompt)
    assert isinstance(message["reasoning_ms"], int)
    assert message["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 8,
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    assert "reasoning" not in [f.event for f in plain]
    assert plain[-1].data["message"]["reasoning"] is None
    assert plain[-1].data["message"]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}
