"""Tool calls end to end (docs/api.md, "Tool calls"): streamed calls become `tool_call` events
and the answer's `tool_calls`; a tool-result turn is reserved only when it answers every call of
the project's latest answer, under the project's row lock; the context sent upstream carries the
calls and their results, and never starts inside a tool chain nor cuts one. Through the whole
app, in front of a fake OpenAI-compatible server (tests/fake_openai.py), or the demo generator."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from tests.fake_openai import MODEL, Exchange, FakeModel, Reply, answer
from tests.support import (
    create_project,
    create_user,
    events_only,
    generate,
    read_stream,
    running_server,
    settings_for,
)

SYSTEM_PROMPT = "You are a terse test assistant."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {"type": "function", "function": {"name": "get-time_2", "parameters": {}}}
TOOLS = [WEATHER, CLOCK]


def openai_settings(database_url: str, base_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "generator": "openai",
        "openai_base_url": base_url,
        "openai_model": MODEL,
        "openai_system_prompt": SYSTEM_PROMPT,
        "openai_first_token_seconds": 5.0,
        "openai_idle_seconds": 5.0,
        "openai_total_seconds": 20.0,
    }
    return settings_for(database_url, **{**values, **overrides})


def calls(*pieces: dict[str, Any], text: str = "", finish_reason: str = "tool_calls") -> Reply:
    """An answer of tool-call pieces (each a ``delta.tool_calls`` item), as OpenAI streams it."""

    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(role="assistant", content=text or None)
        for piece in pieces:
            await x.delta(tool_calls=[piece])
        await x.delta(finish_reason=finish_reason)
        await x.done()

    return reply


def first(index: int, call_id: str | None, name: str, arguments: str = "") -> dict[str, Any]:
    piece: dict[str, Any] = {
        "index": index,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    if call_id is not None:
        piece["id"] = call_id
    return piece


def more(index: int, arguments: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": arguments}}


TWO_CALLS = calls(
    first(0, "call_w", "get_weather", '{"ci'),
    first(1, None, "get-time_2"),  # no id: the server gives it one
    more(0, 'ty": "Par'),
    more(1, "{}"),
    more(0, 'is"}'),
)


async def post_results(
    client: httpx.AsyncClient, project: str, results: list[dict[str, str]], **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{project}/generations",
        json={"tool_results": results, **body},
        headers={"Accept": "application/json"},
    )


async def answer_results(
    client: httpx.AsyncClient, project: str, results: list[dict[str, str]], **body: Any
) -> list[Any]:
    response, frames = await read_stream(
        client,
        "POST",
        f"/api/projects/{project}/generations",
        json={"tool_results": results, **body},
    )
    assert response.status_code == 200, response.text
    return events_only(frames)


async def rows(database_url: str) -> list[tuple[int, str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetch("SELECT sequence, role, status FROM messages ORDER BY sequence")
    finally:
        await conn.close()
    return [(r["sequence"], r["role"], r["status"]) for r in found]


async def test_streamed_tool_calls_are_events_and_the_answer_keeps_them(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with FakeModel([TWO_CALLS]) as model:
        settings = openai_settings(database_url, model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            events = await generate(
                client, project, "Weather and time?", tools=TOOLS, tool_choice="required"
            )
            done = events[-1].data["message"]
            stored = (await client.get(f"/api/projects/{project}/messages/{done['id']}")).json()
            url = f"/api/projects/{project}/messages/{done['id']}/events"
            _, replayed = await read_stream(client, "GET", url)
    # Both go upstream unchanged.
    [request] = model.requests
    assert request.body["tools"] == TOOLS and request.body["tool_choice"] == "required"
    pieces = [e.data for e in events if e.event == "tool_call"]
    ours = pieces[1]["id"]
    assert ours.startswith("call_") and len(ours) == len("call_") + 24
    assert pieces == [
        {"index": 0, "id": "call_w", "name": "get_weather", "arguments": '{"ci'},
        {"index": 1, "id": ours, "name": "get-time_2", "arguments": ""},
        {"index": 0, "id": None, "name": None, "arguments": 'ty": "Par'},
        {"index": 1, "id": None, "name": None, "arguments": "{}"},
        {"index": 0, "id": None, "name": None, "arguments": 'is"}'},
    ]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "done"
    assert (done["status"], done["finish_reason"], done["content"]) == ("success", "tool_calls", "")
    expected = [
        {"id": "call_w", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": ours, "name": "get-time_2", "arguments": "{}"},
    ]
    assert done["tool_calls"] == expected
    assert stored["tool_calls"] == expected and stored["tool_results"] is None
    # Stored and replayed as they were sent.
    assert [(f.id, f.event, f.data_lines) for f in events_only(replayed)] == [
        (f.id, f.event, f.data_lines) for f in events
    ]


async def test_a_tool_result_turn_sends_the_calls_and_results_in_call_order(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    async with FakeModel([TWO_CALLS, answer("Sunny, ", "noon.")]) as model:
        settings = openai_settings(database_url, model.base_url)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            events = await generate(
                client, project, "Weather and time?", tools=TOOLS, tool_choice="auto"
            )
            ours = events[-1].data["message"]["tool_calls"][1]["id"]
            results = [
                {"tool_call_id": ours, "content": "12:00"},  # not in the calls' order
                {"tool_call_id": "call_w", "content": '{"sky": "sunny"}'},
            ]
            second = await answer_results(client, project, results)
            history = (await client.get(f"/api/projects/{project}/messages")).json()
    start = second[0].data
    assert start["user_message"]["role"] == "tool"
    assert (start["user_message"]["sequence"], start["assistant_message"]["sequence"]) == (3, 4)
    assert start["user_message"]["tool_results"] == results
    assert start["user_message"]["content"] == ""
    assert second[-1].event == "done" and second[-1].data["message"]["content"] == "Sunny, noon."
    assert second[-1].data["message"]["tool_calls"] is None
    messages = history["messages"]
    assert [(m["sequence"], m["role"]) for m in messages] == [
        (1, "user"),
        (2, "assistant"),
        (3, "tool"),
        (4, "assistant"),
    ]
    request = model.requests[1].body
    # The turn's tools and tool_choice again, though the results did not repeat them.
    assert request["tools"] == TOOLS and request["tool_choice"] == "auto"
    assert request["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Weather and time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": ours,
                    "type": "function",
                    "function": {"name": "get-time_2", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": '{"sky": "sunny"}'},
        {"role": "tool", "tool_call_id": ours, "content": "12:00"},
    ]


async def test_the_history_window_keeps_tool_chains_whole(database_url: str) -> None:
    """A window of one turn (HISTORY_MESSAGES=2): a tool-result turn still gets the whole chain
    it continues (user, calls, results, calls, results); the next user message gets no part of
    a chain that does not fit, and none of a chain whose calls were never answered."""
    token = await create_user(database_url, "alice")
    replies = [
        calls(first(0, "c1", "get_weather", "{}")),
        calls(first(0, "c2", "get_weather", "{}")),
        answer("Done."),
        answer("Hello."),
        calls(first(0, "c3", "get_weather", "{}")),
        answer("Bye."),
    ]
    async with FakeModel(replies) as model:
        settings = openai_settings(database_url, model.base_url, history_messages=2)
        async with running_server(settings) as srv, srv.client(token) as client:
            project = await create_project(client)
            await generate(client, project, "Q1", tools=[WEATHER])
            await answer_results(client, project, [{"tool_call_id": "c1", "content": "r1"}])
            await answer_results(client, project, [{"tool_call_id": "c2", "content": "r2"}])
            await generate(client, project, "Q2")  # after a chain of 3 turns: no room
            await generate(client, project, "Q3", tools=[WEATHER])  # calls, never answered
            await generate(client, project, "Q4")
    bodies = [r.body["messages"] for r in model.requests]
    summary = [[(m["role"], m.get("content"), m.get("tool_call_id")) for m in b] for b in bodies]
    system = ("system", SYSTEM_PROMPT, None)
    assert summary[2] == [
        system,
        ("user", "Q1", None),
        ("assistant", None, None),
        ("tool", "r1", "c1"),
        ("assistant", None, None),
        ("tool", "r2", "c2"),
    ]
    assert [m["tool_calls"][0]["id"] for m in bodies[2] if m.get("tool_calls")] == ["c1", "c2"]
    assert summary[3] == [system, ("user", "Q2", None)]
    assert summary[4] == [system, ("user", "Q2", None), ("assistant", "Hello.", None),
                          ("user", "Q3", None)]  # fmt: skip
    # The window (one turn) is Q3's, whose calls nobody answered: left out whole.
    assert summary[5] == [system, ("user", "Q4", None)]


# Tool-result turns refused, with the demo generator (a message starting with /tool calls its
# demo tool, browser_time).


async def demo_calls(client: httpx.AsyncClient, project: str) -> list[Any]:
    events = await generate(client, project, "/tool what time is it?")
    message = events[-1].data["message"]
    assert (message["status"], message["finish_reason"]) == ("success", "tool_calls")
    assert next(e.data["name"] for e in events if e.event == "tool_call") == "browser_time"
    calls: list[Any] = message["tool_calls"]
    return calls


async def test_tool_results_are_refused_unless_they_answer_the_latest_answers_calls(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)

        async def refused(results: list[dict[str, str]], status: int, code: str) -> None:
            before = await rows(database_url)
            response = await post_results(client, project, results)
            assert (response.status_code, response.json()["code"]) == (status, code), response.text
            assert await rows(database_url) == before, "nothing is written"
            count = (await client.get(f"/api/projects/{project}")).json()["message_count"]
            assert count == len(before)

        one = [{"tool_call_id": "call_x", "content": "r"}]
        await refused(one, 409, "tool_calls_not_pending")  # no answer at all
        await generate(client, project, "plain")
        await refused(one, 409, "tool_calls_not_pending")  # an answer without calls
        [call] = await demo_calls(client, project)
        await refused(one, 422, "tool_results_mismatch")  # an unknown id
        good = {"tool_call_id": call["id"], "content": "12:00"}
        await refused([good, good], 422, "tool_results_mismatch")  # twice the same call
        await refused([good, *one], 422, "tool_results_mismatch")  # one too many
        taken = await post_results(client, project, [good])
        assert taken.status_code == 202, taken.text
        assert taken.json()["user_message"]["role"] == "tool"
        _, frames = await read_stream(client, "GET", taken.json()["events_url"])  # its end
        assert events_only(frames)[-1].event == "done"
        await refused([good], 409, "tool_calls_not_pending")  # answered already
        # A later message: the calls are no longer the latest answer's.
        [call] = await demo_calls(client, project)
        await generate(client, project, "never mind")
        await refused([{"tool_call_id": call["id"], "content": "x"}], 409, "tool_calls_not_pending")
        # The request's shape: exactly one of message and tool_results.
        for body, field in (
            ({"message": "hi", "tool_results": [good]}, "(body)"),
            ({}, "message"),
            ({"tool_results": []}, "tool_results"),
            ({"tool_results": [good], "image_urls": ["https://example.com/a.png"]}, "(body)"),
            ({"message": "hi", "tools": [{"type": "function", "function": {"name": "a b"}}]},
             "tools.0.function.name"),
            ({"message": "hi", "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ):  # fmt: skip
            response = await client.post(f"/api/projects/{project}/generations", json=body)
            assert response.status_code == 422, (body, response.text)
            assert [e["field"] for e in response.json()["errors"]] == [field], response.text
        many = [{"type": "function", "function": {"name": f"t{i}"}} for i in range(65)]
        response = await client.post(
            f"/api/projects/{project}/generations", json={"message": "hi", "tools": many}
        )
        assert response.status_code == 422
        big = {**WEATHER, "function": {**WEATHER["function"], "description": "x" * 70_000}}
        response = await client.post(
            f"/api/projects/{project}/generations", json={"message": "hi", "tools": [big]}
        )
        assert (response.status_code, response.json()["code"]) == (422, "tools_too_large")


async def test_concurrent_results_for_the_same_calls_exactly_one_wins(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        [call] = await demo_calls(client, project)
        results = [{"tool_call_id": call["id"], "content": "12:00"}]
        responses = await asyncio.gather(
            *(post_results(client, project, results) for _ in range(8))
        )
        codes = sorted(
            (r.status_code, r.json().get("code") if r.status_code != 202 else None)
            for r in responses
        )
        assert codes == [(202, None)] + [(409, "tool_calls_not_pending")] * 7
        taken = next(r for r in responses if r.status_code == 202).json()
        events_url = taken["events_url"]
        _, frames = await read_stream(client, "GET", events_url)
    assert events_only(frames)[-1].event == "done"
    # The demo answers the results by quoting them.
    assert "12:00" in events_only(frames)[-1].data["message"]["content"]
    assert [(s, role) for s, role, _ in await rows(database_url)] == [
        (1, "user"),
        (2, "assistant"),
        (3, "tool"),
        (4, "assistant"),
    ]


async def test_a_repeated_tool_result_turn_finds_its_pair(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        [call] = await demo_calls(client, project)
        results = [{"tool_call_id": call["id"], "content": "12:00"}]
        first_try = await post_results(client, project, results, client_request_id="k1")
        again = await post_results(client, project, results, client_request_id="k1")
        other = [{"tool_call_id": call["id"], "content": "13:00"}]
        reused = await post_results(client, project, other, client_request_id="k1")
    assert first_try.status_code == 202 and again.status_code == 202
    assert again.json()["user_message"]["id"] == first_try.json()["user_message"]["id"]
    assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")
    assert len(await rows(database_url)) == 4
