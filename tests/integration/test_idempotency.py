"""Invariant 7: a repeated client_request_id never creates messages."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.support import (
    create_project,
    create_user,
    events_only,
    generate,
    read_stream,
    running_server,
    settings_for,
)


async def _count(database_url: str, project: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM messages WHERE project_id = $1", uuid.UUID(project)
            )
        )
    finally:
        await conn.close()


async def test_repeat_answers_with_the_same_pair_and_stream(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        first = await generate(client, project, "hello", client_request_id="abc-1")
        again = await generate(client, project, "hello", client_request_id="abc-1")
        accepted = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "hello", "client_request_id": "abc-1"},
            headers={"Accept": "application/json"},
        )
    assert [(e.id, e.event, e.data_lines) for e in again] == [
        (e.id, e.event, e.data_lines) for e in first
    ]
    assert accepted.status_code == 202
    assert accepted.json()["assistant_message"]["id"] == first[0].data["assistant_message"]["id"]
    assert await _count(database_url, project) == 2


async def test_same_key_other_message_is_409(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        await generate(client, project, "hello", client_request_id="k")
        response = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "other", "client_request_id": "k"},
        )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency_key_reused"
    assert await _count(database_url, project) == 2


async def test_concurrent_duplicates_create_one_pair(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_delta_ms=20)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        streams = await asyncio.gather(
            *(generate(client, project, "same", client_request_id="dup") for _ in range(30))
        )
        # Interleave other requests on the same project: they take 3..2n+2 with no gap.
        await asyncio.gather(*(generate(client, project, f"o{i}") for i in range(5)))
    ids = {s[0].data["assistant_message"]["id"] for s in streams}
    assert len(ids) == 1
    assert all(s[-1].event == "done" for s in streams)
    conn = await asyncpg.connect(database_url)
    try:
        seqs = [
            r[0]
            for r in await conn.fetch(
                "SELECT sequence FROM messages WHERE project_id = $1 ORDER BY sequence",
                uuid.UUID(project),
            )
        ]
    finally:
        await conn.close()
    assert seqs == list(range(1, 13))


async def test_event_source_reconnect_resumes_the_same_generation(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=6)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        url = f"/api/generate-stream?projectId={project}&message=hi&clientRequestId=es-1"
        _, first = await read_stream(client, "GET", url)
        full = events_only(first)
        _, resumed = await read_stream(client, "GET", url, headers={"Last-Event-ID": "4"})
        _, by_query = await read_stream(client, "GET", url + "&lastEventId=4")
    assert [e.id for e in events_only(resumed)] == [e.id for e in full[4:]]
    assert [e.data_lines for e in events_only(resumed)] == [e.data_lines for e in full[4:]]
    assert [e.id for e in events_only(by_query)] == [e.id for e in full[4:]]
    assert await _count(database_url, project) == 2


async def test_generate_stream_requires_client_request_id(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        response = await client.get(f"/api/generate-stream?projectId={project}&message=hi")
    assert response.status_code == 400
    assert response.json()["code"] == "missing_parameter"
    assert await _count(database_url, project) == 0
