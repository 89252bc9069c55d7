"""Invariant 8: nobody reads, lists, streams or writes into another user's project."""

from __future__ import annotations

import uuid

import pytest

from tests.support import (
    create_project,
    create_user,
    generate,
    read_stream,
    running_server,
    settings_for,
)

# (method, path template, JSON body); {p} = a project, {m} = its assistant message.
PROJECT_ENDPOINTS = [
    ("GET", "/api/projects/{p}", None),
    ("POST", "/api/projects/{p}/generations", {"message": "intrude"}),
    ("GET", "/api/generate-stream?projectId={p}&message=intrude&clientRequestId=x1", None),
    ("GET", "/api/projects/{p}/messages", None),
    ("GET", "/api/projects/{p}/messages/{m}", None),
    ("GET", "/api/projects/{p}/messages/{m}/events", None),
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
