"""One answer that reasons, then calls tools (the two features of issue 20 together): its
`reasoning` and `tool_call` events share the answer's one numbered log, each stored once (kinds
`r` and `c` in the same chunks) and resumed exactly once, held at the boundary and after the end,
on the writer and on a worker that reads the table; the message keeps both; the tool-result turn
sends the calls upstream, never the reasoning. In front of the fake OpenAI-compatible server
(tests/fake_openai.py), which sends the last piece of reasoning and the first piece of a call in
one chunk, as a model server may."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from server.events import KIND_OF
from tests.fake_openai import Exchange, FakeModel, Reply, answer
from tests.integration.test_tool_calls import (
    SYSTEM_PROMPT,
    WEATHER,
    answer_results,
    first,
    more,
    openai_settings,
)
from tests.support import (
    Frame,
    create_project,
    create_user,
    events_only,
    parse_frames,
    read_stream,
    running_server,
)

THOUGHTS = ["I need ", "the weather."]
USAGE = {
    "prompt_tokens": 7,
    "completion_tokens": 20,
    "completion_tokens_details": {"reasoning_tokens": 12},
}
CALLS = [
    {"id": "call_w", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"id": "call_t", "name": "get_weather", "arguments": "{}"},
]


def reason_then_call(thought: asyncio.Event, gate: asyncio.Event) -> Reply:
    """Reasoning, then two calls; the chunk with the last reasoning also starts the first call.
    Sets ``thought`` after that chunk and waits for ``gate`` before the rest."""

    async def reply(x: Exchange) -> None:
        await x.head()
        await x.delta(role="assistant", content="")
        await x.delta(reasoning_content=THOUGHTS[0])
        await x.delta(
            reasoning_content=THOUGHTS[1],
            tool_calls=[first(0, "call_w", "get_weather", '{"ci')],
        )
        thought.set()
        await gate.wait()
        await x.delta(reasoning_content=None, tool_calls=[more(0, 'ty": "Paris"}')])
        await x.delta(tool_calls=[first(1, "call_t", "get_weather", "{}")])
        await x.delta(finish_reason="tool_calls")
        if x.asks_for_usage:
            await x.usage(USAGE)
        await x.done()

    return reply


def wire(frames: list[Frame]) -> list[tuple[int | None, str | None, list[str]]]:
    return [(f.id, f.event, f.data_lines) for f in frames]


async def resume(client: httpx.AsyncClient, url: str, cursor: int) -> list[Frame]:
    response, frames = await read_stream(client, "GET", url, headers={"Last-Event-ID": str(cursor)})
    assert response.status_code == 200, (cursor, response.text)
    return events_only(frames)


async def stored_kinds(database_url: str, message_id: str) -> str:
    """The kinds of the answer's stored events, in order (terminal markers left out)."""
    conn = await asyncpg.connect(database_url)
    try:
        kinds = await conn.fetchval(
            "SELECT string_agg(kinds, '' ORDER BY first_event_id) FROM event_chunks"
            " WHERE message_id = $1 AND kinds <> 't'",
            message_id,
        )
    finally:
        await conn.close()
    return str(kinds)


async def test_an_answer_that_reasons_then_calls_tools_stores_and_resumes_both_once(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    thought, gate = asyncio.Event(), asyncio.Event()
    replies = [reason_then_call(thought, gate), answer("Sunny.")]
    async with FakeModel(replies) as model:
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
            running: dict[str, object] = {}
            async with on_a.stream(
                "POST",
                f"/api/projects/{project}/generations",
                json={"message": "Weather?", "tools": [WEATHER]},
            ) as response:
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    if listener is not None:
                        continue
                    seen = events_only(parse_frames(buffer[: buffer.rfind(b"\n\n") + 2]))
                    if "tool_call" not in {f.event for f in seen}:
                        continue
                    # Held after the chunk that ends the reasoning and starts a call: both kinds
                    # are stored (a listener sees only stored events).
                    message_id = seen[0].data["assistant_message"]["id"]
                    url = f"/api/projects/{project}/messages/{message_id}"
                    running = (await on_b.get(url)).json()
                    cursor = next(f.id for f in seen if f.event == "reasoning")  # the first
                    assert cursor is not None
                    listener = asyncio.create_task(resume(on_b, f"{url}/events", cursor))
                    gate.set()
            assert listener is not None
            tail = await asyncio.wait_for(listener, 30)  # a bound on a hang only
            full = events_only(parse_frames(buffer))
            final = full[-1].data["message"]
            url = f"/api/projects/{project}/messages/{final['id']}"
            got = (await on_b.get(url)).json()
            # After the end, from every cursor, on the writer and on the other worker.
            resumed = {
                (name, c): await resume(client, f"{url}/events", c)
                for name, client in (("a", on_a), ("b", on_b))
                for c in range(len(full))
            }
            kinds = await stored_kinds(database_url, final["id"])
            second = await answer_results(
                on_a,
                project,
                [
                    {"tool_call_id": "call_w", "content": "sunny"},
                    {"tool_call_id": "call_t", "content": "mild"},
                ],
            )
    assert thought.is_set()
    names = [f.event for f in full]
    assert names == [
        "start",
        "progress",  # contacting model
        "progress",  # reasoning
        "reasoning",
        "reasoning",
        "progress",  # writing: the first call, from the chunk that ends the reasoning
        "tool_call",
        "tool_call",
        "tool_call",
        "done",
    ]
    assert [f.id for f in full] == list(range(1, len(full) + 1)), "one sequence for all events"
    assert [f.data["text"] for f in full if f.event == "reasoning"] == THOUGHTS
    assert [f.data for f in full if f.event == "tool_call"] == [
        {"index": 0, "id": "call_w", "name": "get_weather", "arguments": '{"ci'},
        {"index": 0, "id": None, "name": None, "arguments": 'ty": "Paris"}'},
        {"index": 1, "id": "call_t", "name": "get_weather", "arguments": "{}"},
    ]
    # Each event stored once, by kind, in the log's order (event 1, start, is not stored).
    assert kinds == "".join(KIND_OF[name] for name in names[1:-1])
    # While held: the reasoning so far, no content, no calls yet (written with the end).
    assert (running["status"], running["content"], running["reasoning"]) == (
        "streaming",
        "",
        "".join(THOUGHTS),
    )
    assert running["tool_calls"] is None
    # A listener that joined inside the reasoning got every later event once, in order.
    cursor = next(f.id for f in full if f.event == "reasoning")
    assert cursor is not None
    assert wire(tail) == wire(full[cursor:])
    for (name, c), frames in resumed.items():
        assert wire(frames) == wire(full[c:]), (name, c)
    # The message keeps both, apart from each other and from the content.
    for message in (final, got):
        assert (message["status"], message["finish_reason"], message["content"]) == (
            "success",
            "tool_calls",
            "",
        )
        assert message["reasoning"] == "".join(THOUGHTS)
        assert message["tool_calls"] == CALLS
        assert message["usage"] == USAGE
        assert isinstance(message["reasoning_ms"], int) and message["reasoning_ms"] >= 0
    assert got["reasoning_ms"] == final["reasoning_ms"]
    # The tool-result turn: the calls and results go upstream, the reasoning never does.
    assert second[-1].event == "done" and second[-1].data["message"]["content"] == "Sunny."
    messages = model.requests[1].body["messages"]
    assert messages[:2] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Weather?"},
    ]
    assert messages[2]["role"] == "assistant" and messages[2]["content"] is None
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["call_w", "call_t"]
    assert "I need" not in str(messages)
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "call_w", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_t", "content": "mild"},
    ]
