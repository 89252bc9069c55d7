"""Invariant 8: nobody reads, lists, streams, cancels or writes into another user's project."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from server.auth import hash_token
from server.store import Store
from tests.support import (
    Frame,
    GatedGenerator,
    create_project,
    create_user,
    events_only,
    generate,
    parse_frames,
    read_stream,
    running_server,
    settings_for,
)

# (method, path template, JSON body); {p} = a project, {m} = its assistant message.
PROJECT_ENDPOINTS = [
    ("GET", "/api/projects/{p}", None),
    ("PATCH", "/api/projects/{p}", {"title": "renamed by an intruder"}),
    ("POST", "/api/projects/{p}/generations", {"message": "intrude"}),
    ("GET", "/api/generate-stream?projectId={p}&message=intrude&clientRequestId=x1", None),
    ("GET", "/api/projects/{p}/messages", None),
    ("GET", "/api/projects/{p}/messages/{m}", None),
    ("GET", "/api/projects/{p}/messages/{m}/events", None),
    ("POST", "/api/projects/{p}/messages/{m}/cancel", None),
]
ALL_ENDPOINTS = [
    ("GET", "/api/projects", None),
    ("POST", "/api/projects", {"title": "t"}),
    *PROJECT_ENDPOINTS,
]


@pytest.fixture
async def world(database_url: str):  # type: ignore[no-untyped-def]
    alice = await create_user(database_url, "alice")
    bob = await create_user(database_url, "bob")
    async with running_server(settings_for(database_url)) as srv, srv.client(alice) as client:
        project = await create_project(client, "alice's secret project")
        events = await generate(client, project, "alice's secret message")
        message = events[0].data["assistant_message"]["id"]
        yield srv, {"alice": alice, "bob": bob}, project, message


async def test_no_credentials_is_401_everywhere(world) -> None:  # type: ignore[no-untyped-def]
    srv, _tokens, project, message = world
    async with srv.client() as anonymous:
        for method, path, body in ALL_ENDPOINTS:
            url = path.format(p=project, m=message)
            response = await anonymous.request(method, url, json=body)
            assert response.status_code == 401, (method, url, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert "secret" not in response.text


@pytest.mark.parametrize("header", ["Bearer nonsense", "Basic abc", "Bearer", "bearer ord_x"])
async def test_bad_tokens_are_401(world, header: str) -> None:  # type: ignore[no-untyped-def]
    srv, _tokens, project, message = world
    async with srv.client(headers={"Authorization": header}) as client:
        for method, path, body in ALL_ENDPOINTS:
            response = await client.request(method, path.format(p=project, m=message), json=body)
            assert response.status_code == 401, (method, path, response.text)


async def test_another_users_project_is_404_everywhere(world) -> None:  # type: ignore[no-untyped-def]
    srv, tokens, project, message = world
    async with srv.client(tokens["bob"]) as bob:
        for method, path, body in PROJECT_ENDPOINTS:
            url = path.format(p=project, m=message)
            response = await bob.request(method, url, json=body)
            assert response.status_code == 404, (method, url, response.text)
            assert "secret" not in response.text
        listing = (await bob.get("/api/projects")).json()
        assert listing == {"projects": []}
        # Bob's own project id with Alice's message id: still nothing.
        own = await create_project(bob, "bob's")
        response = await bob.get(f"/api/projects/{own}/messages/{message}")
        assert response.status_code == 404
    async with srv.client(tokens["alice"]) as alice:
        history = (await alice.get(f"/api/projects/{project}/messages")).json()["messages"]
        assert len(history) == 2, "bob's attempts wrote nothing into alice's project"
        title = (await alice.get(f"/api/projects/{project}")).json()["title"]
        assert title == "alice's secret project"


async def test_unknown_ids_are_404(world) -> None:  # type: ignore[no-untyped-def]
    srv, tokens, _project, _message = world
    async with srv.client(tokens["alice"]) as alice:
        for method, path, body in PROJECT_ENDPOINTS:
            url = path.format(p=uuid.uuid4(), m=uuid.uuid4())
            response = await alice.request(method, url, json=body)
            assert response.status_code == 404, (method, url, response.text)


async def test_cookie_session_and_origin_check(world) -> None:  # type: ignore[no-untyped-def]
    srv, tokens, project, _message = world
    async with srv.client() as browser:
        bad = await browser.post("/api/session", json={"token": "wrong"})
        assert bad.status_code == 401
        ok = await browser.post("/api/session", json={"token": tokens["alice"]})
        assert ok.status_code == 204
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert (await browser.get(f"/api/projects/{project}")).status_code == 200
        # An unsafe request carried by the cookie needs a same-origin Origin header.
        no_origin = await browser.post("/api/projects", json={"title": "x"})
        assert no_origin.status_code == 401
        evil = await browser.post(
            "/api/projects", json={"title": "x"}, headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 401
        same = await browser.post(
            "/api/projects", json={"title": "x"}, headers={"Origin": srv.base_url}
        )
        assert same.status_code == 201
        out = await browser.delete("/api/session")
        assert out.status_code == 204
        browser.cookies.clear()
        assert (await browser.get(f"/api/projects/{project}")).status_code == 401


async def test_cookie_generate_stream_refuses_other_origins(world) -> None:  # type: ignore[no-untyped-def]
    """Regression: GET /api/generate-stream starts a generation under the session cookie with no
    check of where the request came from; SameSite=Strict keeps other sites out, but not a page
    of the same site on another port or subdomain (an <img> or EventSource pointed at it)."""
    srv, tokens, project, _message = world
    url = "/api/generate-stream?projectId={p}&message=csrf&clientRequestId={k}"
    refused = [
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "http://localhost.example", "Sec-Fetch-Site": "same-origin"},
    ]
    allowed = [
        {"Sec-Fetch-Site": "same-origin"},  # the demo page's EventSource: no Origin on it
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Origin": srv.base_url, "Sec-Fetch-Site": "same-origin"},
        {},  # a browser that sends neither header
    ]
    async with srv.client() as browser:
        signed_in = await browser.post(
            "/api/session", json={"token": tokens["alice"]}, headers={"Origin": srv.base_url}
        )
        assert signed_in.status_code == 204
        for n, headers in enumerate(refused):
            response = await browser.get(url.format(p=project, k=f"no{n}"), headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["code"] == "cross_origin_request"
        for n, headers in enumerate(allowed):
            response, frames = await read_stream(
                browser, "GET", url.format(p=project, k=f"yes{n}"), headers=headers
            )
            assert response.status_code == 200, (headers, response.text)
            assert frames[-1].event == "done"
    # A bearer token cannot be sent by another site's page: no such check applies to it.
    async with srv.client(tokens["alice"]) as api:
        headers = {"Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"}
        response, _frames = await read_stream(
            api, "GET", url.format(p=project, k="bearer"), headers=headers
        )
        assert response.status_code == 200
        history = (await api.get(f"/api/projects/{project}/messages")).json()["messages"]
    keys = {m["client_request_id"] for m in history if m["role"] == "user"}
    assert keys == {None, "yes0", "yes1", "yes2", "yes3", "bearer"}


async def test_revoked_token_is_401_on_every_endpoint(world, database_url: str) -> None:  # type: ignore[no-untyped-def]
    """Every authenticated route, with a bearer token or the session cookie, once the token is
    revoked (TOKEN_CACHE_SECONDS is 0 here); and nothing is written."""
    srv, tokens, project, message = world
    async with srv.client() as browser:
        signed_in = await browser.post(
            "/api/session", json={"token": tokens["alice"]}, headers={"Origin": srv.base_url}
        )
        assert signed_in.status_code == 204
        async with Store.single(database_url) as store:
            assert await store.revoke_token(hash_token(tokens["alice"])) == 1
        async with srv.client(tokens["alice"]) as bearer:
            for client in (bearer, browser):
                for method, path, body in ALL_ENDPOINTS:
                    url = path.format(p=project, m=message)
                    headers = {"Origin": srv.base_url} if method != "GET" else {}
                    response = await client.request(method, url, json=body, headers=headers)
                    assert response.status_code == 401, (method, url, response.text)
                    assert response.json()["code"] == "invalid_token"
        again = await browser.post(
            "/api/session", json={"token": tokens["alice"]}, headers={"Origin": srv.base_url}
        )
        assert again.status_code == 401
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM projects") == 1
        assert await conn.fetchval("SELECT count(*) FROM messages") == 2
    finally:
        await conn.close()


async def _events_up_to(client: httpx.AsyncClient, url: str, last_id: int) -> list[Frame]:
    """The stream's events from the start up to ``last_id`` (the message is still running)."""
    buffer = b""
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            buffer += chunk
            complete = buffer[: buffer.rfind(b"\n\n") + 2]
            events = events_only(parse_frames(complete))
            if events and events[-1].id is not None and events[-1].id >= last_id:
                return events
    raise AssertionError(f"the stream ended before event {last_id}")


async def _running_count(database_url: str, username: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT r.running_generations FROM users AS u "
            "JOIN user_running AS r ON r.user_id = u.id WHERE u.username = $1",
            username,
        )
    finally:
        await conn.close()


async def test_another_users_cancel_is_404_and_changes_nothing(database_url: str) -> None:
    alice = await create_user(database_url, "alice")
    bob = await create_user(database_url, "bob")
    generator = GatedGenerator()
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(alice) as client,
        srv.client(bob) as intruder,
    ):
        project = await create_project(client)
        accepted = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "running"},
            headers={"Accept": "application/json"},
        )
        message = accepted.json()["assistant_message"]["id"]
        message_url = f"/api/projects/{project}/messages/{message}"
        events_url = accepted.json()["events_url"]
        try:
            before_events = await asyncio.wait_for(_events_up_to(client, events_url, 2), 10)
            before = (await client.get(message_url)).json()
            assert before["status"] == "streaming"
            assert await _running_count(database_url, "alice") == 1

            refused = await intruder.post(f"{message_url}/cancel")
            assert refused.status_code == 404
            assert "running" not in refused.text

            after_events = await asyncio.wait_for(_events_up_to(client, events_url, 2), 10)
            assert (await client.get(message_url)).json() == before
            assert [(e.id, e.event, e.data_lines) for e in after_events] == [
                (e.id, e.event, e.data_lines) for e in before_events
            ]
            assert await _running_count(database_url, "alice") == 1
        finally:
            generator.gate.set()
        response, frames = await read_stream(client, "GET", events_url)
        assert response.status_code == 200
        final = (await client.get(message_url)).json()
    events = events_only(frames)
    assert [e.event for e in events] == ["start", "delta", "delta", "done"]
    assert events[-1].data["message"]["content"] == "first second"
    assert (final["status"], final["content"]) == ("success", "first second")
    assert await _running_count(database_url, "alice") == 0
