"""Bad input gets a specific 4xx problem document, never a 5xx, and reserves no sequence."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from tests.support import create_project, create_user, running_server, settings_for

GEN = "/api/projects/{p}/generations"
BAD_GENERATIONS: list[tuple[str, Any, dict[str, str], int, str]] = [
    # (case, body (bytes or JSON), extra headers, status, code)
    ("not json", b"{nope", {}, 400, "invalid_json"),
    ("json array", b"[1, 2]", {}, 400, "invalid_json"),
    ("json string", b'"hi"', {}, 400, "invalid_json"),
    ("message not a string", {"message": 5}, {}, 400, "wrong_type"),
    ("image_urls not a list", {"message": "x", "image_urls": "http://a"}, {}, 400, "wrong_type"),
    ("missing message", {}, {}, 422, "invalid_input"),
    ("unknown field", {"message": "x", "extra": 1}, {}, 422, "invalid_input"),
    ("empty message", {"message": ""}, {}, 422, "invalid_input"),
    ("whitespace message", {"message": " \n\t "}, {}, 422, "invalid_input"),
    ("too long", {"message": "x" * 32_001}, {}, 422, "message_too_long"),
    ("NUL", {"message": "a\u0000b"}, {}, 422, "invalid_input"),
    (
        "bad request id",
        {"message": "x", "client_request_id": "has space"},
        {},
        422,
        "invalid_input",
    ),
    ("long request id", {"message": "x", "client_request_id": "a" * 65}, {}, 422, "invalid_input"),
    (
        "too many images",
        {"message": "x", "image_urls": ["http://a.example/i"] * 9},
        {},
        422,
        "invalid_input",
    ),
    ("relative image url", {"message": "x", "image_urls": ["/a.png"]}, {}, 422, "invalid_input"),
    ("ftp image url", {"message": "x", "image_urls": ["ftp://a/b"]}, {}, 422, "invalid_input"),
    (
        "wrong content type",
        b'{"message": "x"}',
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
    ("huge body", {"message": "x" * 300_000}, {}, 413, "payload_too_large"),
]


@pytest.fixture
async def setup(database_url: str):  # type: ignore[no-untyped-def]
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        yield client, project, database_url


@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "code"),
    BAD_GENERATIONS,
    ids=[c[0] for c in BAD_GENERATIONS],
)
async def test_bad_generation_requests(setup, case, body, headers, status, code) -> None:  # type: ignore[no-untyped-def]
    client, project, database_url = setup
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"] = {"Content-Type": "application/json", **headers}
    else:
        kwargs["json"] = body
    response = await client.post(GEN.format(p=project), **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= problem.keys()
    conn = await asyncpg.connect(database_url)
    try:
        last = await conn.fetchval(
            "SELECT last_sequence FROM projects WHERE id = $1", uuid.UUID(project)
        )
    finally:
        await conn.close()
    assert last == 0, "a rejected request reserves no sequence"


# (path, body, the problem's detail): our own sentence about the field, in docs/api.md's words.
DETAILS: list[tuple[str, dict[str, Any], str]] = [
    (GEN, {}, "message is required"),
    (GEN, {"message": ""}, "message must not be empty"),
    (GEN, {"message": " \n"}, "message must not be only whitespace"),
    (GEN, {"message": "a\u0000b"}, "message must not contain the NUL character"),
    (GEN, {"message": 5}, "message must be a string"),
    (GEN, {"message": "x", "extra": 1}, "extra is not a field of this request"),
    (
        GEN,
        {"message": "x", "client_request_id": "has space"},
        "client_request_id must be 1 to 64 characters, each a letter, a digit, - or _",
    ),
    (GEN, {"message": "x", "image_urls": "http://a"}, "image_urls must be a list of strings"),
    (
        GEN,
        {"message": "x", "image_urls": ["http://a.example/i"] * 9},
        "image_urls must be a list of at most 8 URLs",
    ),
    (
        GEN,
        {"message": "x", "image_urls": ["http://a.example/i", "/a.png"]},
        "image_urls[1] must be an absolute http or https URL",
    ),
    (
        GEN,
        {"message": "x", "image_urls": ["http://a.example/" + "i" * 2048]},
        "image_urls[0] must be an absolute http or https URL of at most 2,048 characters",
    ),
    (
        GEN,
        {"message": "x", "on_running": "later"},
        "on_running must be concurrent, reject, enqueue or interrupt",
    ),
    (GEN, {"message": "x" * 32_001}, "message must be at most 32000 characters"),
    (
        GEN,
        {"client_request_id": "a b"},
        "message is required; client_request_id must be 1 to 64 characters, each a letter, a "
        "digit, - or _",
    ),
    ("/api/projects", {"title": ""}, "title must not be empty"),
    (
        "/api/projects",
        {"title": "x" * 201},
        "title must be 1 to 200 characters, not only whitespace",
    ),
    ("/api/projects", {"title": 3}, "title must be a string"),
    ("/api/session", {"token": ""}, "token must not be empty"),
]


@pytest.mark.parametrize(("path", "body", "detail"), DETAILS)
async def test_validation_problems_speak_our_words_not_pydantics(setup, path, body, detail) -> None:  # type: ignore[no-untyped-def]
    """Regression: the detail was pydantic's ("message: Value should have at least 1 item after
    validation, not 0"); each `errors` item's message is the same sentence."""
    client, project, _ = setup
    response = await client.post(path.format(p=project), json=body)
    assert response.status_code in (400, 422), response.text
    problem = response.json()
    assert problem["detail"] == detail
    messages = [e["message"] for e in problem.get("errors", [])]
    assert "; ".join(messages) in ("", detail)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        (
            "clientRequestId=a%20b",
            "clientRequestId must be 1 to 64 characters, each a letter, a digit, - or _",
        ),
        (
            "clientRequestId=k&onRunning=later",
            "onRunning must be concurrent, reject, enqueue or interrupt",
        ),
        ("clientRequestId=k&message=%20", "message must not be only whitespace"),
    ],
)
async def test_query_problems_name_the_query_parameter(setup, query: str, detail: str) -> None:  # type: ignore[no-untyped-def]
    """GET /api/generate-stream's problems name the parameter the client sent
    (clientRequestId), not the field it becomes (client_request_id)."""
    client, project, _ = setup
    if "message=" not in query:
        query += "&message=hi"
    response = await client.get(f"/api/generate-stream?projectId={project}&{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == detail


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=0", 422),
        ("limit=201", 422),
        ("limit=-5", 422),
        ("limit=abc", 400),
        ("limit=99999999999999999999", 422),
        ("before=0", 422),
        ("before=x", 400),
        ("before=3&after=1", 422),
        ("after=-1", 422),
    ],
)
async def test_bad_history_parameters(setup, query: str, status: int) -> None:  # type: ignore[no-untyped-def]
    client, project, _ = setup
    response = await client.get(f"/api/projects/{project}/messages?{query}")
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/api/projects/not-a-uuid",
        "/api/projects/not-a-uuid/messages",
        "/api/projects/123/messages/456",
        "/api/projects/123/messages/456/events",
    ],
)
async def test_bad_uuids_in_paths_are_404(setup, path: str) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = setup
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("abc", 400),
        ("-1", 400),
        ("1.5", 400),
        ("99999999999999999999999", 422),
        ("50", 422),
    ],
)
async def test_bad_last_event_id(setup, header: str, status: int) -> None:  # type: ignore[no-untyped-def]
    client, project, _ = setup
    accepted = await client.post(
        GEN.format(p=project), json={"message": "x"}, headers={"Accept": "application/json"}
    )
    events_url = accepted.json()["events_url"]
    response = await client.get(events_url, headers={"Last-Event-ID": header})
    assert response.status_code == status, response.text


async def test_bad_project_bodies(setup) -> None:  # type: ignore[no-untyped-def]
    client, project, _ = setup
    title = (await client.get(f"/api/projects/{project}")).json()["title"]
    for body, status in [
        ({"title": ""}, 422),
        ({"title": 3}, 400),
        ({}, 422),
        ({"title": "a\u0000"}, 422),
        ({"title": "x", "y": 1}, 422),
    ]:
        response = await client.post("/api/projects", json=body)
        assert response.status_code == status, (body, response.text)
        # A rename takes the same rules, and a refused one changes nothing.
        renamed = await client.patch(f"/api/projects/{project}", json=body)
        assert renamed.status_code == status, (body, renamed.text)
        assert renamed.headers["content-type"] == "application/problem+json"
    assert (await client.get(f"/api/projects/{project}")).json()["title"] == title


async def test_unknown_route_and_method_are_problems(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = setup
    missing = await client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = await client.delete("/api/projects")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/problem+json"


DEEP_JSON = [
    b"[" * 20_000 + b"]" * 20_000,
    b'{"message": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_001,
]


@pytest.mark.parametrize("body", DEEP_JSON, ids=["array", "object"])
async def test_deeply_nested_json_is_400_not_500(setup, body: bytes) -> None:  # type: ignore[no-untyped-def]
    """Regression: json.loads raised RecursionError, a 500 on every JSON endpoint (the
    unauthenticated sign-in included)."""
    client, project, database_url = setup
    headers = {"Content-Type": "application/json"}
    for path in ("/api/session", "/api/projects", GEN.format(p=project)):
        response = await client.post(path, content=body, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_json"
    conn = await asyncpg.connect(database_url)
    try:
        last = await conn.fetchval(
            "SELECT last_sequence FROM projects WHERE id = $1", uuid.UUID(project)
        )
    finally:
        await conn.close()
    assert last == 0
