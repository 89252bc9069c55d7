"""Edges of the contract that clients met: a cursor with leading zeros, a number for a policy,
what a 405 allows, and what EventSource is told by a draining worker."""

from __future__ import annotations

import pytest

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
        ("GET", "/api/session", {"POST", "DELETE"}),
        ("PUT", "/api/session", {"POST", "DELETE"}),
        ("POST", "/api/projects/{p}", {"GET", "HEAD"}),
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
