"""The openai generator, end to end: the whole app (GENERATOR=openai, built from settings) in
front of a real HTTP server on a loopback port that speaks the OpenAI streaming protocol, scripted
per test. Everything is checked through the public API and on the fake upstream's wire."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from server.config import Settings
from server.generators.base import Delta, GenerationContext
from server.generators.openai import OpenAIGenerator
from server.generators.openai_clock import Timeouts
from server.models import Message
from tests.fake_openai import (
    MODEL,
    Exchange,
    FakeModel,
    Received,
    Reply,
    answer,
)
from tests.support import (
    Frame,
    create_project,
    create_user,
    events_only,
    generate,
    parse_frames,
    running_server,
    settings_for,
)

SYSTEM_PROMPT = "You are a terse test assistant."
API_KEY = "sk-test-Zq8vN3xK5mP1wR7t"


# Replies: the scripts of the fake model server (``answer`` is in tests/fake_openai.py).


ROLES_MUST_ALTERNATE = json.dumps(
    {
        "object": "error",
        "message": "Conversation roles must alternate user/assistant/user/assistant/...",
        "type": "BadRequestError",
        "code": 400,
    }
)


def alternates(messages: list[Any]) -> bool:
    """What a strict chat template (Gemma's, Mistral's...) accepts: an optional system message,
    then user and assistant in turn, from a user message to a user message."""
    roles = [m["role"] for m in messages]
    if roles[:1] == ["system"]:
        roles = roles[1:]
    expected = ["user", "assistant"] * (len(roles) // 2) + ["user"]
    return len(roles) % 2 == 1 and roles == expected


def strict(reply: Reply) -> Reply:
    """``reply``, behind a chat template that requires alternating roles: any other request is
    refused with HTTP 400, as vLLM refuses it."""

    async def guarded(x: Exchange) -> None:
        if alternates(x.request.body["messages"]):
            await reply(x)
        else:
            await status(400, ROLES_MUST_ALTERNATE)(x)

    return guarded


def held(started: asyncio.Event, gate: asyncio.Event, first: str, last: str) -> Reply:
    """``first`` at once (then ``started`` is set), and ``last`` once the test opens ``gate``:
    an answer kept running for as long as the test needs."""

    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(first)
        started.set()
        await gate.wait()
        await x.delta(last)
        await x.delta(finish_reason="stop")
        await x.done()

    return reply


def then_silence(*pieces: str) -> Reply:
    """Some pieces (maybe none), then nothing at all until the client gives up."""

    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(role="assistant", content="")
        for piece in pieces:
            await x.delta(piece)
        await x.until_closed()

    return reply


def status(code: int, body: str = "", headers: dict[str, str] | None = None) -> Reply:
    async def reply(x: Exchange) -> None:
        await x.head(code, {"Content-Type": "application/json", **(headers or {})})
        if body:
            await x.piece(body)
        await x.end()

    return reply


def then_garbage(piece: str, garbage: str) -> Reply:
    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(piece)
        await x.event(garbage)
        await x.done()

    return reply


def then_drop(piece: str) -> Reply:
    """A piece, then the connection closes in the middle of the chunked body."""

    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(piece)
        x.writer.close()

    return reply


def then_end_without_done(piece: str) -> Reply:
    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(piece)
        await x.end()

    return reply


def endless(piece: str, pause: float) -> Reply:
    """Pieces every ``pause`` seconds, for as long as the client listens."""

    async def reply(x: Exchange) -> None:
        await x.head()
        writing = asyncio.create_task(forever(x))
        await x.until_closed()
        writing.cancel()

    async def forever(x: Exchange) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await x.delta(piece)
                await asyncio.sleep(pause)

    return reply


# The app in front of the fake model server.


def openai_settings(database_url: str, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "generator": "openai",
        "openai_base_url": base_url,
        "openai_model": MODEL,
        "openai_system_prompt": SYSTEM_PROMPT,
        "openai_connect_timeout_seconds": 1.0,
        "openai_first_token_seconds": 1.0,
        "openai_idle_seconds": 1.0,
        "openai_total_seconds": 10.0,
        "openai_retries": 1,
    }
    return settings_for(database_url, **{**values, **overrides})


@dataclass
class Outcome:
    events: list[Frame]

    @property
    def terminal(self) -> Frame:
        return self.events[-1]

    @property
    def message(self) -> Any:
        return self.terminal.data["message"]

    @property
    def error(self) -> Any:
        assert self.terminal.event == "error", self.terminal
        return self.terminal.data["error"]

    @property
    def pieces(self) -> list[str]:
        return [e.data["text"] for e in self.events if e.event == "delta"]

    @property
    def deltas(self) -> str:
        return "".join(self.pieces)

    @property
    def stages(self) -> list[str]:
        return [e.data["stage"] for e in self.events if e.event == "progress"]


async def run_one(
    database_url: str, replies: list[Reply], message: str = "Hello?", **overrides: Any
) -> tuple[Outcome, FakeModel]:
    """One generation through the whole app, in front of a fake model with ``replies``."""
    token = await create_user(database_url, "alice")
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url, **overrides)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            outcome = Outcome(await generate(client, project, message))
            await model.settled(2.0)  # while the app runs: its shutdown would close them all
    assert outcome.message["content"] == outcome.deltas, "content = the joined deltas"
    return outcome, model


# A normal answer, and what the request carried.


async def test_an_answer_streams_as_deltas_and_succeeds(database_url: str) -> None:
    outcome, model = await run_one(database_url, [answer("Hel", "lo, ", "world")])
    assert [e.event for e in outcome.events[:2]] == ["start", "progress"]
    assert outcome.stages == ["contacting model", "writing"]
    assert outcome.pieces == ["Hel", "lo, ", "world"]
    assert outcome.terminal.event == "done"
    assert (outcome.message["status"], outcome.message["content"]) == ("success", "Hello, world")
    [request] = model.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.body["model"] == MODEL and request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Hello?"},
    ]
    assert "authorization" not in request.headers, "no key set: no Authorization header"


async def test_the_request_carries_the_finished_history_in_order(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    replies = [answer("Hi!"), then_garbage("partial", "{oops"), strict(answer("Fine."))]
    image = "https://example.com/cat.png"
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url, openai_api_key=API_KEY)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            first = await generate(client, project, "Look at this", image_urls=[image])
            failed = await generate(client, project, "And now?")
            last = await generate(client, project, "Still there?")
            history = (await client.get(f"/api/projects/{project}/messages")).text
    assert [f[-1].event for f in (first, failed, last)] == ["done", "error", "done"]
    assert failed[-1].data["message"]["content"] == "partial"
    with_image = [
        {"type": "text", "text": "Look at this"},
        {"type": "image_url", "image_url": {"url": image}},
    ]
    assert model.requests[0].body["messages"][1] == {"role": "user", "content": with_image}
    # The failed turn is left out whole: its answer ("partial") and its question.
    assert model.requests[2].body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": with_image},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Still there?"},
    ]
    for request in model.requests:
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert request.body["model"] == MODEL and request.body["stream"] is True
    everything = json.dumps([f.data_lines for f in first + failed + last]) + history
    assert API_KEY not in everything


async def test_history_is_limited_to_the_most_recent_messages(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with FakeModel([answer("A1"), answer("A2"), answer("A3")]) as model:
        settings = openai_settings(database_url, model.base_url, history_messages=2)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            for prompt in ("Q1", "Q2", "Q3"):
                await generate(client, project, prompt)
    assert [m["content"] for m in model.requests[2].body["messages"]] == [
        SYSTEM_PROMPT,
        "Q2",
        "A2",
        "Q3",
    ]


# A strict chat template: the roles of every request alternate.


def contents(request: Received) -> list[str]:
    return [m["content"] for m in request.body["messages"]]


async def test_a_failed_answer_does_not_break_a_strict_template(database_url: str) -> None:
    """Regression: a failed turn's question stayed in the context without its answer, so the
    request held two user messages in a row and a strict template refused every later answer."""
    replies = [strict(answer("A1")), then_garbage("partial", "{oops"), strict(answer("A3"))]
    token = await create_user(database_url, "alice")
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            ends = [(await generate(client, project, q))[-1].event for q in ("Q1", "Q2", "Q3")]
            ends.append((await generate(client, project, "Q4"))[-1].event)
    assert ends == ["done", "error", "done", "done"]
    assert contents(model.requests[2]) == [SYSTEM_PROMPT, "Q1", "A1", "Q3"]
    assert contents(model.requests[3]) == [SYSTEM_PROMPT, "Q1", "A1", "Q3", "A3", "Q4"]


async def test_a_cancelled_answer_is_left_out_with_its_question(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    replies = [strict(answer("A1")), strict(then_silence("Hel")), strict(answer("A3"))]
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url, openai_idle_seconds=30)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            await generate(client, project, "Q1")
            cancelled = await cancel_after_first_delta(client, project)
            last = await generate(client, project, "Q3")
    assert (cancelled[-1].event, last[-1].event) == ("cancelled", "done")
    assert contents(model.requests[2]) == [SYSTEM_PROMPT, "Q1", "A1", "Q3"]


async def test_a_running_answer_is_left_out_with_its_question(database_url: str) -> None:
    """A second message sent while the first answer streams: the first turn is not finished, so
    none of it goes upstream (its question alone would make two user messages in a row)."""
    token = await create_user(database_url, "alice")
    started, gate = asyncio.Event(), asyncio.Event()
    replies = [
        strict(answer("A1")),
        strict(held(started, gate, "Wait", "ed")),
        strict(answer("A3")),
    ]
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url, openai_idle_seconds=30)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            await generate(client, project, "Q1")
            running = asyncio.create_task(generate(client, project, "Q2"))
            await asyncio.wait_for(started.wait(), 5)
            meanwhile = await generate(client, project, "Q3")
            gate.set()
            first = await running
    assert (first[-1].event, meanwhile[-1].event) == ("done", "done")
    assert contents(model.requests[2]) == [SYSTEM_PROMPT, "Q1", "A1", "Q3"]


@pytest.mark.parametrize(
    ("history_messages", "context"),
    [
        (4, ["Q1", "A1", "Q3", "A3"]),  # two turns: the failed one between does not count
        (3, ["Q3", "A3"]),  # an odd number rounds down to whole turns
        (1, []),
    ],
)
async def test_the_history_window_counts_whole_successful_turns(
    database_url: str, history_messages: int, context: list[str]
) -> None:
    token = await create_user(database_url, "alice")
    replies = [strict(answer("A1")), then_garbage("partial", "{oops"), strict(answer("A3"))]
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url, history_messages=history_messages)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            for prompt in ("Q1", "Q2", "Q3"):
                await generate(client, project, prompt)
            last = await generate(client, project, "Q4")
    assert last[-1].event == "done"
    assert contents(model.requests[3]) == [SYSTEM_PROMPT, *context, "Q4"]


# Usage and finish reason.


async def test_usage_and_finish_reason_are_asked_for_and_stored(database_url: str) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    token = await create_user(database_url, "alice")
    async with FakeModel([answer("Hel", "lo", usage=usage)]) as model:
        settings = openai_settings(database_url, model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            outcome = Outcome(await generate(client, project, "Hi"))
            history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    assert model.requests[0].body["stream_options"] == {"include_usage": True}
    expected = ("success", {"prompt_tokens": 12, "completion_tokens": 2}, "stop")
    for message in (outcome.message, history[1]):
        assert (message["status"], message["usage"], message["finish_reason"]) == expected


async def test_an_answer_cut_short_by_length_is_a_success(database_url: str) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    outcome, _ = await run_one(
        database_url, [answer("Once upon", " a", finish_reason="length", usage=usage)]
    )
    assert outcome.terminal.event == "done"
    assert (outcome.message["status"], outcome.message["content"]) == ("success", "Once upon a")
    assert (outcome.message["finish_reason"], outcome.message["usage"]) == ("length", usage)


@pytest.mark.parametrize(
    "usage",
    [
        None,  # a server that ignores stream_options
        {"prompt_tokens": 2**40, "completion_tokens": 2},  # more than the column holds
        {"prompt_tokens": "12", "completion_tokens": 2},
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"completion_tokens": 2},
        [12, 2],
    ],
)
async def test_an_upstream_without_usable_usage_leaves_it_null(
    database_url: str, usage: Any
) -> None:
    outcome, _ = await run_one(database_url, [answer("Hello", usage=usage)])
    assert (outcome.terminal.event, outcome.message["content"]) == ("done", "Hello")
    assert (outcome.message["usage"], outcome.message["finish_reason"]) == (None, "stop")


def refuses_stream_options(reply: Reply, body: str) -> Reply:
    """``reply``, from a server that refuses the unknown field stream_options with HTTP 400."""

    async def guarded(x: Exchange) -> None:
        if "stream_options" in x.request.body:
            await status(400, body)(x)
        else:
            await reply(x)

    return guarded


@pytest.mark.parametrize(
    "refusal",
    [
        '{"error": {"message": "Unrecognized request argument supplied: stream_options"}}',
        "",  # a bare 400, which names nothing
    ],
)
async def test_an_upstream_that_refuses_stream_options_is_asked_without_it(
    database_url: str, refusal: str
) -> None:
    """Regression guard: asking for usage must not make every answer fail on a server that does
    not know the option. The worker remembers, so later answers cost one request each."""
    usage = {"prompt_tokens": 1, "completion_tokens": 1}
    replies = [refuses_stream_options(answer("Hi", usage=usage), refusal)]
    token = await create_user(database_url, "alice")
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url, openai_retries=0)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            answers = [Outcome(await generate(client, project, q)) for q in ("Q1", "Q2")]
    for outcome in answers:
        assert (outcome.terminal.event, outcome.message["content"]) == ("done", "Hi")
        assert (outcome.message["usage"], outcome.message["finish_reason"]) == (None, "stop")
        assert outcome.stages == ["contacting model", "writing"]
    asked = ["stream_options" in request.body for request in model.requests]
    assert asked == [True, False, False]


# Time limits.


async def test_a_slow_first_token_is_an_upstream_timeout(database_url: str) -> None:
    outcome, model = await run_one(
        database_url, [then_silence()], openai_first_token_seconds=0.3, openai_retries=3
    )
    assert outcome.error["code"] == "upstream_timeout"
    assert "0.3 seconds" in outcome.error["message"]
    assert outcome.message["status"] == "error" and outcome.message["content"] == ""
    assert len(model.requests) == 1, "a timeout is not retried"
    assert model.closed_by_client == 1


async def test_a_stall_mid_answer_is_an_upstream_timeout_keeping_the_partial_text(
    database_url: str,
) -> None:
    outcome, model = await run_one(
        database_url, [then_silence("Hel", "lo")], openai_idle_seconds=0.3, openai_retries=3
    )
    assert outcome.error["code"] == "upstream_timeout"
    assert "stalled" in outcome.error["message"]
    assert (outcome.message["status"], outcome.message["content"]) == ("error", "Hello")
    assert len(model.requests) == 1 and model.closed_by_client == 1


async def test_an_answer_longer_than_the_total_time_is_an_upstream_timeout(
    database_url: str,
) -> None:
    outcome, model = await run_one(
        database_url, [endless("la ", pause=0.05)], openai_total_seconds=0.6
    )
    assert outcome.error["code"] == "upstream_timeout"
    assert "did not finish within 0.6 seconds" in outcome.error["message"]
    assert outcome.message["content"].startswith("la la ")
    assert model.closed_by_client == 1


# Upstream refusals.


async def test_a_429_is_rate_limited_and_reports_retry_after(database_url: str) -> None:
    limited = status(429, '{"error": {"message": "slow down"}}', {"Retry-After": "30"})
    outcome, model = await run_one(database_url, [limited, answer("never")])
    assert outcome.error["code"] == "upstream_rate_limited"
    assert "Retry-After: 30" in outcome.error["message"]
    assert len(model.requests) == 1, "a 30 s wait is longer than a first token may take"


async def test_a_429_with_a_short_retry_after_is_retried(database_url: str) -> None:
    limited = status(429, "", {"Retry-After": "0"})
    outcome, model = await run_one(database_url, [limited, answer("ok")])
    assert (outcome.terminal.event, outcome.message["content"]) == ("done", "ok")
    assert outcome.stages == ["contacting model", "retrying", "writing"]
    assert len(model.requests) == 2


async def test_a_500_is_an_upstream_error_without_the_key(database_url: str) -> None:
    echo = json.dumps({"error": {"message": f"engine crashed (key {API_KEY}) \n\n badly"}})
    outcome, model = await run_one(database_url, [status(500, echo)], openai_api_key=API_KEY)
    assert outcome.error["code"] == "upstream_error"
    assert outcome.error["message"] == (
        "the model server answered HTTP 500: engine crashed (key [redacted]) badly"
    )
    assert len(model.requests) == 2, "one retry before the first token"
    assert API_KEY not in json.dumps([e.data_lines for e in outcome.events])


async def test_a_400_is_not_retried_beyond_leaving_out_stream_options(
    database_url: str,
) -> None:
    """The one other try of a 400 is without stream_options (which the 400 may be about); the
    400 of that try is reported, and nothing is remembered: the next answer asks for usage."""
    token = await create_user(database_url, "alice")
    async with FakeModel([status(400, '{"error": "model not found"}')]) as model:
        settings = openai_settings(database_url, model.base_url, openai_retries=3)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            first = Outcome(await generate(client, project, "Hello?"))
            second = Outcome(await generate(client, project, "Anyone?"))
    for outcome in (first, second):
        assert outcome.error == {
            "code": "upstream_error",
            "message": "the model server answered HTTP 400: model not found",
        }
        assert outcome.stages == ["contacting model"], "no retry is announced"
    asked = ["stream_options" in request.body for request in model.requests]
    assert asked == [True, False, True, False]


async def test_a_401_shows_none_of_the_upstream_text(database_url: str) -> None:
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {API_KEY[:6]}***"}})
    outcome, model = await run_one(database_url, [status(401, echo)], openai_api_key=API_KEY)
    assert outcome.error == {
        "code": "upstream_error",
        "message": "the model server refused the request (HTTP 401); check OPENAI_API_KEY",
    }
    assert len(model.requests) == 1


async def test_a_refused_connection_is_an_upstream_error(database_url: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome, _ = await run_one(
        database_url, [], openai_base_url=f"http://127.0.0.1:{port}/v1", openai_retries=1
    )
    assert outcome.error["code"] == "upstream_error"
    assert "could not connect" in outcome.error["message"]
    assert outcome.stages == ["contacting model", "retrying"]


# A broken stream.


async def test_malformed_json_in_a_chunk_is_an_upstream_protocol_error(database_url: str) -> None:
    outcome, _ = await run_one(database_url, [then_garbage("Hi", '{"choices": [')])
    assert outcome.error["code"] == "upstream_protocol"
    assert (outcome.message["status"], outcome.message["content"]) == ("error", "Hi")


async def test_a_deeply_nested_chunk_is_an_upstream_protocol_error(database_url: str) -> None:
    """Regression: json.loads raised RecursionError, which ended the answer as
    generator_failed (an internal error) instead of naming the upstream's fault."""
    outcome, _ = await run_one(database_url, [then_garbage("Hi", "[" * 20_000 + "]" * 20_000)])
    assert outcome.error["code"] == "upstream_protocol"
    assert outcome.message["content"] == "Hi"


async def test_a_deeply_nested_error_body_is_an_upstream_error(database_url: str) -> None:
    """Regression: the error body's excerpt parsed it as JSON and hit RecursionError."""
    outcome, _ = await run_one(database_url, [status(400, "[" * 20_000 + "]" * 20_000)])
    assert outcome.error["code"] == "upstream_error"
    assert outcome.error["message"].startswith("the model server answered HTTP 400: [[[")


async def test_a_chunk_of_the_wrong_shape_is_an_upstream_protocol_error(database_url: str) -> None:
    outcome, _ = await run_one(database_url, [then_garbage("Hi", '{"text": "no choices"}')])
    assert outcome.error["code"] == "upstream_protocol"
    assert outcome.message["content"] == "Hi"


async def test_an_error_reported_mid_stream_is_an_upstream_error(database_url: str) -> None:
    reported = json.dumps({"error": {"message": "out of memory", "type": "InternalError"}})
    outcome, _ = await run_one(database_url, [then_garbage("Hi", reported)])
    assert outcome.error == {
        "code": "upstream_error",
        "message": "the model server reported an error: out of memory",
    }
    assert outcome.message["content"] == "Hi"


async def test_a_connection_dropped_mid_answer_is_an_upstream_error(database_url: str) -> None:
    outcome, _ = await run_one(database_url, [then_drop("Hel")])
    assert outcome.error["code"] == "upstream_error"
    assert "broke during the answer" in outcome.error["message"]
    assert (outcome.message["status"], outcome.message["content"]) == ("error", "Hel")


async def test_a_body_ending_without_done_is_an_upstream_protocol_error(database_url: str) -> None:
    outcome, _ = await run_one(database_url, [then_end_without_done("Hel")])
    assert outcome.error["code"] == "upstream_protocol"
    assert "[DONE]" in outcome.error["message"]
    assert outcome.message["content"] == "Hel"


# Retries: only before the first token.


async def test_a_500_before_the_first_token_is_retried(database_url: str) -> None:
    outcome, model = await run_one(database_url, [status(500, "busy"), answer("second try")])
    assert (outcome.terminal.event, outcome.message["content"]) == ("done", "second try")
    assert outcome.stages == ["contacting model", "retrying", "writing"]
    assert len(model.requests) == 2
    assert model.requests[0].body == model.requests[1].body


async def test_no_retry_once_content_was_produced(database_url: str) -> None:
    outcome, model = await run_one(
        database_url, [then_drop("Hel"), answer("again")], openai_retries=3
    )
    assert outcome.error["code"] == "upstream_error"
    assert outcome.message["content"] == "Hel"
    assert len(model.requests) == 1


# Cancel closes the upstream request.


async def test_cancel_closes_the_upstream_connection(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with FakeModel([then_silence("Hel")]) as model:
        settings = openai_settings(
            database_url, model.base_url, openai_idle_seconds=30, openai_total_seconds=60
        )
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            events = await cancel_after_first_delta(client, project)
            await model.wait_closed_by_client(5.0)
    assert events[-1].event == "cancelled"
    assert events[-1].data["message"]["content"] == "Hel"
    assert model.closed_by_client == 1


async def cancel_after_first_delta(client: Any, project: str) -> list[Frame]:
    raw, cancelled = b"", False
    url = f"/api/projects/{project}/generations"
    async with client.stream("POST", url, json={"message": "Tell me a long story"}) as response:
        async for chunk in response.aiter_bytes():
            raw += chunk
            if not cancelled and b"event: delta" in raw:
                cancelled = True
                start = events_only(parse_frames(raw[: raw.rindex(b"\n\n") + 2]))[0]
                await cancel(client, project, start.data["assistant_message"]["id"])
    return events_only(parse_frames(raw))


async def cancel(client: Any, project: str, message_id: str) -> None:
    response = await client.post(f"/api/projects/{project}/messages/{message_id}/cancel")
    assert response.status_code == 202, response.text


async def test_closing_the_generator_at_a_yield_closes_the_upstream_connection() -> None:
    """The runner's ``aclosing`` closes a generator that waits at a yield (a cancel during
    back-pressure): that must close the upstream request too, not leave it to the GC."""
    async with FakeModel([then_silence("Hel")]) as model:
        generator = OpenAIGenerator(
            base_url=model.base_url, model=MODEL, timeouts=Timeouts(1.0, 5.0, 5.0, 10.0)
        )
        context = GenerationContext(a_message("user", 1), a_message("assistant", 2))
        try:
            items = generator(context)
            async with contextlib.aclosing(items):  # type: ignore[type-var]
                async for item in items:
                    if isinstance(item, Delta):
                        break
            await model.wait_closed_by_client(2.0)
        finally:
            await generator.aclose()


def a_message(role: Any, sequence: int) -> Message:
    now = datetime.now(UTC)
    return Message(
        id=uuid4(),
        project_id=uuid4(),
        sequence=sequence,
        role=role,
        kind="message",
        content="Tell me a long story",
        status="success",
        image_urls=[],
        client_request_id=None,
        created_by=uuid4(),
        created_at=now,
        updated_at=now,
        error=None,
        usage=None,
        finish_reason=None,
        reasoning=None,
        reasoning_ms=None,
    )


async def test_an_upstream_error_text_the_database_cannot_store_is_cleaned(
    database_url: str,
) -> None:
    """Regression: an upstream's error text reached `error_message` without the NUL/lone-surrogate
    cleanup that deltas get; the final write then failed every time, and the answer never ended."""
    body = json.dumps({"error": {"message": "bad\u0000 input \ud800 here"}})
    outcome, _ = await run_one(database_url, [status(400, body)])
    assert outcome.error == {
        "code": "upstream_error",
        "message": "the model server answered HTTP 400: bad\ufffd input \ufffd here",
    }
    assert outcome.message["status"] == "error"
