"""Edges of the contract that clients met: a cursor with leading zeros, a number for a policy,
what a 405 allows, and what EventSource is told by a draining worker."""

from __future__ import annotations

import json
import re

import jsonschema_rs  # schemathesis's own validator
import pytest
from pydantic import ValidationError

from server.models import TEXT_PATTERN, CreateProject
from tests.support import (
    create_project,
    create_user,
    events_only,
    generate,
    read_stream,
    running_server,
    settings_for,
)


async def test_last_event_id_with_leading_zeros_is_that_number(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        events = await generate(client, project, "hello")
        message = events[-1].data["message"]
        url = f"/api/projects/{project}/messages/{message['id']}/events"
        for header in ("000000000001", "0000000000000000000001", "01"):
            response, frames = await read_stream(
                client, "GET", url, headers={"Last-Event-ID": header}
            )
            assert response.status_code == 200, (header, response.text)
            assert [f.id for f in events_only(frames)] == [e.id for e in events[1:]], header
        response, frames = await read_stream(client, "GET", f"{url}?lastEventId=000000000001")
        assert response.status_code == 200, response.text
        assert [f.id for f in events_only(frames)] == [e.id for e in events[1:]]
        # All zeros is 0, from the start; significant digits past an id are still out of range.
        response, frames = await read_stream(client, "GET", url, headers={"Last-Event-ID": "000"})
        assert [f.id for f in events_only(frames)] == [e.id for e in events]
        beyond = await client.get(url, headers={"Last-Event-ID": "000100000000000"})
        assert beyond.status_code == 422, beyond.text
        assert beyond.json()["code"] == "last_event_id_out_of_range"


@pytest.mark.parametrize("value", [3, 1.5, True, ["enqueue"], {"policy": "enqueue"}])
async def test_a_non_string_on_running_is_wrong_type(database_url: str, value: object) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        response = await client.post(
            f"/api/projects/{project}/generations", json={"message": "hi", "on_running": value}
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "wrong_type"
        history = await client.get(f"/api/projects/{project}/messages")
        assert history.json()["messages"] == []


@pytest.mark.parametrize(
    ("method", "path", "served"),
    [
        ("DELETE", "/api/projects", {"GET", "HEAD", "POST"}),
        ("PUT", "/api/projects", {"GET", "HEAD", "POST"}),
        ("PATCH", "/api/session", {"GET", "HEAD", "POST", "DELETE"}),
        ("PUT", "/api/session", {"GET", "HEAD", "POST", "DELETE"}),
        ("POST", "/api/projects/{p}", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("HEAD", "/api/generate-stream", {"GET"}),
    ],
)
async def test_every_405_allows_every_method_the_path_serves(
    database_url: str, method: str, path: str, served: set[str]
) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        response = await client.request(method, path.format(p=project))
        assert response.status_code == 405, response.text
        assert set(response.headers["allow"].split(", ")) == served
        if method != "HEAD":
            assert response.json()["code"] == "method_not_allowed"


async def test_a_draining_worker_tells_eventsource_to_reconnect_not_to_stop(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, shutdown_grace_seconds=0.5, retry_ms=1500)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        url = f"/api/generate-stream?projectId={project}&message=hi&clientRequestId=k1"
        await srv.services.worker.drain()
        # The first request, and EventSource's resume of it (the same URL with Last-Event-ID).
        for headers in ({}, {"Last-Event-ID": "3"}):
            async with client.stream("GET", url, headers=headers) as response:
                body = await response.aread()
            assert response.status_code == 200, body
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert body == b"retry: 1500\n\n"
        # Nothing was started: another worker will start (or resume) it when EventSource is back.
        history = await client.get(f"/api/projects/{project}/messages")
        assert history.json()["messages"] == []
        # Not EventSource: a POST still says 503 draining, with Retry-After.
        post = await client.post(f"/api/projects/{project}/generations", json={"message": "hi"})
        assert post.status_code == 503, post.text
        assert post.json()["code"] == "draining"


# What schemathesis found against /openapi.json (issue Reliability II, item 10)


async def test_every_sse_event_is_described_by_the_document(database_url: str) -> None:
    """Each event of a stream matches the document's ``itemSchema`` (by its event name), and its
    ``data`` the ``contentSchema`` of that event; the stream is not just "a string"."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        document = (await client.get("/openapi.json")).json()
        project = await create_project(client)
        done = await generate(client, project, "hello")
        # Reasoning events, and a message with reasoning and reasoning_tokens in its usage.
        done += await generate(client, project, "/think hello")
        done += await generate(client, project, "/tool what time is it?")  # tool_call events
        cancelled_start = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "stop me"},
            headers={"Accept": "application/json"},
        )
        message = cancelled_start.json()["assistant_message"]
        await client.post(f"/api/projects/{project}/messages/{message['id']}/cancel")
        _, frames = await read_stream(
            client, "GET", f"/api/projects/{project}/messages/{message['id']}/events"
        )
    assert document["openapi"].startswith("3.2")
    root = {"components": document["components"]}
    for path, method in [
        ("/api/projects/{project_id}/generations", "post"),
        ("/api/generate-stream", "get"),
        ("/api/projects/{project_id}/messages/{message_id}/events", "get"),
    ]:
        stream = document["paths"][path][method]["responses"]["200"]["content"]
        item = stream["text/event-stream"]["itemSchema"]
        by_name = {one["properties"]["event"]["const"]: one for one in item["oneOf"]}
        assert set(by_name) == {
            "start",
            "progress",
            "reasoning",
            "delta",
            "tool_call",
            "done",
            "error",
            "cancelled",
        }
        assert {"reasoning", "tool_call"} <= {frame.event for frame in done}
        for frame in [*done, *events_only(frames)]:
            assert frame.event is not None and frame.id is not None
            event = {"event": frame.event, "id": str(frame.id), "data": frame.data_lines[0]}
            jsonschema_rs.validate({**root, **item}, event)
            branch = by_name[frame.event]
            content = branch["properties"]["data"]["contentSchema"]
            jsonschema_rs.validate({**root, **content}, json.loads(event["data"]))
            others = [b for name, b in by_name.items() if name != frame.event]
            assert not any(_valid(event, {**root, **b}) for b in others), frame.event


def _valid(instance: object, schema: dict[str, object]) -> bool:
    valid: bool = jsonschema_rs.is_valid(schema, instance)
    return valid


async def test_an_empty_number_in_the_query_is_refused_not_the_default(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        for url in (
            "/api/projects?limit=",
            f"/api/projects/{project}/messages?limit=",
            f"/api/projects/{project}/messages?before=",
        ):
            response = await client.get(url)
            assert response.status_code == 400, (url, response.text)
            assert response.json()["code"] == "invalid_parameter"


async def test_an_empty_last_event_id_header_does_not_hide_a_bad_query_cursor(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        events = await generate(client, project, "hello")
        message = events[-1].data["message"]
        url = f"/api/projects/{project}/messages/{message['id']}/events"
        bad = await client.get(f"{url}?lastEventId=abc", headers={"Last-Event-ID": ""})
        assert bad.status_code == 400, bad.text
        assert bad.json()["code"] == "invalid_last_event_id"
        # Empty is "not sent", both ways: the query's cursor is used, or none at all.
        _, frames = await read_stream(
            client, "GET", f"{url}?lastEventId=2", headers={"Last-Event-ID": ""}
        )
        assert [f.id for f in events_only(frames)] == [e.id for e in events[2:]]
        _, frames = await read_stream(client, "GET", f"{url}?lastEventId=")
        assert [f.id for f in events_only(frames)] == [e.id for e in events]
        padded = await client.get(f"{url}?lastEventId=%201")
        assert padded.status_code == 400, padded.text


@pytest.mark.parametrize(
    "url",
    ["https://\u00fb\u00f7\u0010", "http://a.example/a b", "http://a.example/%zz", "http://é.fr/"],
)
async def test_an_image_url_that_is_not_a_uri_is_refused(database_url: str, url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        response = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "look", "image_urls": [url]},
        )
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["image_urls.0"]
        fine = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "look", "image_urls": ["https://xn--9ca.fr/a%20b.png?x=1#y"]},
            headers={"Accept": "application/json"},
        )
        assert fine.status_code == 202, fine.text


BLANK_OR_NUL = ["", " ", "\u00a0", "\u3000\t\n", "\x1c", "\u2028", "a\x00", "\x00"]
FINE_TEXT = ["a", " a ", "\u00a0x", "\ufeff", "\u200b", "👍🏻", "x\n"]


@pytest.mark.parametrize("text", BLANK_OR_NUL + FINE_TEXT)
def test_the_documented_text_pattern_refuses_what_the_server_refuses(text: str) -> None:
    """A title or message the document allows is one the server takes, and the other way round
    (the positive-data check found "\u00a0", a blank title, allowed by the document)."""
    documented = re.fullmatch(TEXT_PATTERN, text) is not None
    try:
        CreateProject.model_validate({"title": text})
        taken = True
    except ValidationError:
        taken = False
    assert documented == taken == (text in FINE_TEXT)


async def test_a_query_parameter_given_twice_is_refused_not_one_of_them_taken(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        events = await generate(client, project, "hello")
        message = events[-1].data["message"]
        stream = f"/api/generate-stream?projectId={project}&clientRequestId=k2"
        for url in (
            "/api/projects?limit=1&limit=2",
            f"/api/projects/{project}/messages?after=0&after=1",
            f"/api/projects/{project}/messages/{message['id']}/events?lastEventId=1&lastEventId=2",
            f"{stream}&message=one&message=two",
            f"{stream}&message=one&onRunning=reject&onRunning=enqueue",
        ):
            response = await client.get(url)
            assert response.status_code == 400, (url, response.text)
            assert response.json()["code"] == "invalid_parameter"
        history = await client.get(f"/api/projects/{project}/messages")
        assert len(history.json()["messages"]) == 2  # the refused generations wrote nothing
