"""Usage and finish reason (API.md "Message"): what a generator reports of a successful answer is
written once, with its final status, and shows wherever the message does; an answer ended any
other way (a failure, cancel, shutdown) carries null, as does every message before its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.generators.base import Delta, Finish, GenerationContext, GeneratorError, Item
from server.generators.demo import demo_pieces
from server.models import Usage
from server.store import Store
from tests.support import (
    create_project,
    create_user,
    events_only,
    generate,
    read_stream,
    running_server,
    settings_for,
)

USAGE = {"prompt_tokens": 7, "completion_tokens": 2}


class ReportingGenerator:
    """Two pieces, then its report (usage and ``length``). After the report, a prompt "fail"
    raises and a prompt "hold" waits for ``gate`` (to be cancelled, or shut down)."""

    def __init__(self) -> None:
        self.reported = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Delta("Hello, ")
        yield Delta("world")
        yield Finish(Usage(**USAGE), "length")
        self.reported.set()
        if context.prompt == "fail":
            raise GeneratorError("upstream_error", "it broke after its report")
        if context.prompt == "hold":
            await self.gate.wait()


class SilentGenerator:
    """An answer, and no report of how it ended."""

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Delta("Hello")


def outcome(message: dict[str, Any]) -> tuple[Any, ...]:
    return message["status"], message["usage"], message["finish_reason"]


async def test_usage_and_finish_reason_come_with_the_final_status(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url)
    async with (
        running_server(settings, generator=ReportingGenerator()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        events = await generate(client, project, "count me")
        start, done = events[0].data, events[-1].data
        url = f"/api/projects/{project}/messages/{done['message']['id']}"
        fetched = (await client.get(url)).json()
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
        _, replayed = await read_stream(client, "GET", f"{url}/events")
    assert events[-1].event == "done"
    assert outcome(done["message"]) == ("success", USAGE, "length"), "cut short is a success"
    assert done["message"]["content"] == "Hello, world"
    # The placeholder in `start` is the pair as created: no report yet, live or replayed.
    assert outcome(start["assistant_message"]) == ("pending", None, None)
    assert (start["user_message"]["usage"], start["user_message"]["finish_reason"]) == (None, None)
    assert fetched == done["message"]
    assert history == [start["user_message"], done["message"]]
    assert [e.data_lines for e in events_only(replayed)] == [e.data_lines for e in events]


async def test_a_generator_that_reports_nothing_leaves_both_null(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url)
    async with (
        running_server(settings, generator=SilentGenerator()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        events = await generate(client, project, "anything")
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    assert outcome(events[-1].data["message"]) == ("success", None, None)
    assert outcome(history[1]) == ("success", None, None)


async def start_json(client: httpx.AsyncClient, project: str, prompt: str) -> str:
    """Start an answer without listening; its URL."""
    response = await client.post(
        f"/api/projects/{project}/generations",
        json={"message": prompt},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 202, response.text
    return f"/api/projects/{project}/messages/{response.json()['assistant_message']['id']}"


async def test_an_answer_that_does_not_succeed_keeps_no_report(database_url: str) -> None:
    """Its generator had reported usage; a failure, a cancel or a shutdown after that report
    ends the answer with neither usage nor finish reason."""
    token = await create_user(database_url, "alice")
    generator = ReportingGenerator()
    settings = settings_for(database_url, shutdown_grace_seconds=0.2)
    async with running_server(settings, generator=generator) as srv, srv.client(token) as client:
        project = await create_project(client)
        failed = (await generate(client, project, "fail"))[-1]
        held = await start_json(client, project, "hold")
        await asyncio.wait_for(generator.reported.wait(), 5)
        cancelled = await client.post(f"{held}/cancel")
        generator.reported.clear()
        shut_down = await start_json(client, project, "hold")
        await asyncio.wait_for(generator.reported.wait(), 5)
        shut_down_message = (await client.get(shut_down)).json()
        project_id, owner_id = shut_down_message["project_id"], shut_down_message["created_by"]
    # The server has shut down, ending the last answer.
    assert failed.event == "error"
    assert outcome(failed.data["message"]) == ("error", None, None)
    assert cancelled.status_code == 202
    assert outcome(cancelled.json()["message"]) == ("cancelled", None, None)
    async with Store.single(database_url) as store:
        found = await store.message_by_id(
            UUID(owner_id), UUID(project_id), UUID(shut_down.rsplit("/", 1)[1])
        )
    assert found is not None and found.message.error is not None
    assert found.message.error.code == "server_shutdown"
    assert (found.message.usage, found.message.finish_reason) == (None, None)


async def test_the_openapi_document_describes_usage_and_finish_reason(database_url: str) -> None:
    async with running_server(settings_for(database_url)) as srv, srv.client() as client:
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    message = schemas["Message"]
    assert {"usage", "finish_reason"} <= set(message["required"])
    assert message["properties"]["usage"]["anyOf"] == [
        {"$ref": "#/components/schemas/Usage"},
        {"type": "null"},
    ]
    assert {"type": "null"} in message["properties"]["finish_reason"]["anyOf"]
    usage = schemas["Usage"]
    assert set(usage["required"]) == {"prompt_tokens", "completion_tokens"}
    assert usage["properties"]["prompt_tokens"]["type"] == "integer"


async def tokens(client: httpx.AsyncClient) -> dict[str, float]:
    """``orderly_tokens_total`` by kind."""
    found = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for sample in family.samples:
            if sample.name == "orderly_tokens_total":
                found[sample.labels["kind"]] = sample.value
    return found


async def test_tokens_are_counted_in_the_metrics(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    generator = ReportingGenerator()
    settings = settings_for(database_url)
    async with running_server(settings, generator=generator) as srv, srv.client(token) as client:
        before = await tokens(client)
        project = await create_project(client)
        for prompt in ("one", "two", "fail"):  # the failed one's report is not counted
            await generate(client, project, prompt)
        after = await tokens(client)
    assert set(before) == {"prompt", "completion"}, "both kinds are shown from the start"
    assert after["prompt"] - before["prompt"] == 2 * USAGE["prompt_tokens"]
    assert after["completion"] - before["completion"] == 2 * USAGE["completion_tokens"]


async def test_the_demo_generator_reports_usage_and_can_be_cut_short(database_url: str) -> None:
    """Usage and a cut-short answer, without a model: the demo generator counts the message's
    words and its pieces, and a message whose first word is /cut is answered by half."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=6)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        whole = (await generate(client, project, "How are you today?"))[-1].data["message"]
        cut = (await generate(client, project, "/cut Tell me a story"))[-1].data["message"]
    assert outcome(whole) == ("success", {"prompt_tokens": 4, "completion_tokens": 6}, "stop")
    assert outcome(cut) == ("success", {"prompt_tokens": 5, "completion_tokens": 3}, "length")
    assert cut["content"] == "".join(demo_pieces("/cut Tell me a story", 6)[0])
