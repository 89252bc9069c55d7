"""Hostile input and limits: clear 4xx answers, nothing stored that should not be, no gaps."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import httpx_sse

from server.generators.base import Delta, GenerationContext, Item
from tests.support import (
    GatedGenerator,
    RunningServer,
    assistant_count,
    create_project,
    create_user,
    generate,
    parse_frames,
    read_stream,
    running_server,
    settings_for,
)


async def _sequences(database_url: str, project: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT sequence FROM messages WHERE project_id = $1 ORDER BY sequence",
            uuid.UUID(project),
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def test_running_generation_cap_under_real_concurrency(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, max_running_per_user=3, demo_deltas=4, demo_delta_ms=150)
    async with running_server(settings) as srv, srv.client(token) as client:
        projects = [await create_project(client, f"p{i}") for i in range(2)]

        async def attempt(n: int) -> tuple[int, str, str | None]:
            response, _frames = await read_stream(
                client,
                "POST",
                f"/api/projects/{projects[n % 2]}/generations",
                json={"message": f"m{n}"},
            )
            return response.status_code, response.text, response.headers.get("retry-after")

        results = await asyncio.gather(*(attempt(n) for n in range(10)))
        accepted = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        assert len(accepted) == 3, results
        assert len(refused) == 7
        for _status, text, retry_after in refused:
            assert json.loads(text)["code"] == "too_many_running_generations"
            assert retry_after is not None
        # The refused requests reserved nothing: each project's sequences are still 1..2n.
        total = 0
        for project in projects:
            seqs = await _sequences(database_url, project)
            assert seqs == list(range(1, len(seqs) + 1))
            total += len(seqs)
        assert total == 6
        # Finished generations release their slot.
        events = await generate(client, projects[0], "after")
        assert events[-1].event == "done"


async def test_request_rate_limit(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, rate_per_minute=60, rate_burst=5)
    async with running_server(settings) as srv, srv.client(token) as client:
        statuses = [(await client.get("/api/projects")) for _ in range(6)]
    assert [r.status_code for r in statuses[:5]] == [200] * 5
    assert statuses[5].status_code == 429
    assert statuses[5].json()["code"] == "rate_limited"
    assert int(statuses[5].headers["retry-after"]) >= 1


async def test_open_streams_per_worker_limit(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, max_streams_per_worker=2, demo_delta_ms=300)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        url = f"/api/projects/{project}/generations"
        async with (
            client.stream("POST", url, json={"message": "a"}) as one,
            client.stream("POST", url, json={"message": "b"}) as two,
        ):
            assert one.status_code == two.status_code == 200
            third = await client.post(url, json={"message": "c"})
            assert third.status_code == 503
            assert third.json()["code"] == "too_many_streams"
            assert "retry-after" in third.headers
        # JSON mode needs no stream and is still accepted.
    assert await _sequences(database_url, project) == [1, 2, 3, 4]


class InjectingGenerator:
    PIECES = ('\n\ndata: {"text": "forged"}\n\n', "\r", "id: 99\n", "event: done\r\n", "ok")

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        for piece in self.PIECES:
            yield Delta(piece)


async def test_sse_framing_cannot_be_injected(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    message = "user text\n\nevent: done\ndata: {}\r\nid: 99\n\n"
    async with (
        running_server(settings_for(database_url), generator=InjectingGenerator()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        url = f"/api/projects/{project}/generations"
        async with httpx_sse.aconnect_sse(client, "POST", url, json={"message": message}) as source:
            # (httpx-sse reports the data-less retry: block as an event; browsers do not)
            events = [sse async for sse in source.aiter_sse() if sse.data]
    names = [e.event for e in events]
    assert names == ["start", "delta", "delta", "delta", "delta", "delta", "done"]
    assert [e.id for e in events] == [str(i) for i in range(1, 8)]
    texts = [json.loads(e.data)["text"] for e in events if e.event == "delta"]
    assert tuple(texts) == InjectingGenerator.PIECES
    assert json.loads(events[0].data)["user_message"]["content"] == message
    assert json.loads(events[-1].data)["message"]["content"] == "".join(texts)


async def test_unicode_and_sql_looking_text_round_trip_exactly(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    texts = [
        "emoji \U0001f600\U0001f469\u200d\U0001f4bb",
        "right-to-left \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
        "combining e\u0301 a\u0308\u0323",
        "'); DROP TABLE messages; --",
        "\\u0000 is spelled, not sent",
    ]
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client, "titre \u00e9t\u00e9 \U0001f600")
        for text in texts:
            events = await generate(client, project, text)
            assert events[0].data["user_message"]["content"] == text
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
        title = (await client.get(f"/api/projects/{project}")).json()["title"]
    assert [m["content"] for m in history if m["role"] == "user"] == texts
    assert title == "titre \u00e9t\u00e9 \U0001f600"


async def test_text_the_database_cannot_store_is_422(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        headers = {"Content-Type": "application/json"}
        cases = [
            ("/api/projects", b'{"title": "a\\u0000b"}'),
            ("/api/projects", b'{"title": "lone \\ud800 surrogate"}'),
            (f"/api/projects/{project}/generations", b'{"message": "x\\u0000"}'),
            (f"/api/projects/{project}/generations", b'{"message": "\\udfff"}'),
            (
                f"/api/projects/{project}/generations",
                b'{"message": "x", "client_request_id": "a\\u0000"}',
            ),
        ]
        for path, body in cases:
            response = await client.post(path, content=body, headers=headers)
            assert response.status_code == 422, (path, body, response.text)
        stream = await client.get(
            f"/api/generate-stream?projectId={project}&message=a%00b&clientRequestId=x"
        )
        assert stream.status_code == 422
    assert await _sequences(database_url, project) == []


async def test_security_headers_on_page_and_api(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        for path in ("/", "/static/app.js", "/api/projects", "/healthz"):
            response = await client.get(path)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["x-frame-options"] == "DENY"
        # CORS is off unless configured: no allow-origin header for a foreign origin.
        preflight = await client.options(
            "/api/projects",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers


async def test_oversized_headers_and_urls_are_refused_without_harm(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv:
        port = int(srv.base_url.rsplit(":", 1)[1])
        for request in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
            b"GET /healthz?" + b"q" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                pass
            try:
                head = await asyncio.wait_for(reader.read(200), 10)
            except (OSError, ConnectionResetError):
                head = b""
            writer.close()
            assert head.startswith((b"HTTP/1.1 414", b"HTTP/1.1 431", b"HTTP/1.1 400")), head
        async with srv.client(token) as client:
            assert (await client.get("/api/projects")).status_code == 200


async def test_openapi_document_is_valid_and_complete(database_url: str) -> None:
    import schemathesis

    async with running_server(settings_for(database_url)) as srv, srv.client() as client:
        document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.2")
    schema = schemathesis.openapi.from_dict(document)
    operations = {
        (op.method.upper(), op.path)
        for op in (result.ok() for result in schema.get_all_operations())
    }
    expected = {
        ("POST", "/api/projects"),
        ("GET", "/api/projects"),
        ("GET", "/api/projects/{project_id}"),
        ("DELETE", "/api/projects/{project_id}"),
        ("POST", "/api/projects/{project_id}/generations"),
        ("GET", "/api/generate-stream"),
        ("GET", "/api/projects/{project_id}/messages"),
        ("GET", "/api/projects/{project_id}/messages/{message_id}"),
        ("GET", "/api/projects/{project_id}/messages/{message_id}/events"),
        ("POST", "/api/projects/{project_id}/messages/{message_id}/cancel"),
        ("POST", "/api/session"),
        ("DELETE", "/api/session"),
    }
    assert expected <= operations
    sse = document["paths"]["/api/projects/{project_id}/messages/{message_id}/events"]["get"]
    assert "text/event-stream" in sse["responses"]["200"]["content"]


async def test_openapi_document_gives_this_servers_message_limit(database_url: str) -> None:
    """MAX_MESSAGE_CHARS is a setting: the document states the limit the server keeps (the demo
    page's counter reads it there), and the server keeps the one it states."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, max_message_chars=123)
    async with running_server(settings) as srv, srv.client(token) as client:
        document = (await client.get("/openapi.json")).json()
        schema = document["components"]["schemas"]["GenerateRequest"]["properties"]["message"]
        assert schema["maxLength"] == 123
        project = await create_project(client)
        refused = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "x" * 124},
            headers={"Accept": "application/json"},
        )
        assert refused.status_code == 422
        assert refused.json()["code"] == "message_too_long"


class UnstorableGenerator:
    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Delta("nul \x00 here, ")
        yield Delta("lone \ud800 surrogate")


async def test_generator_output_the_database_cannot_store_is_replaced(database_url: str) -> None:
    """Regression: a NUL from a model would have failed every flush of its message forever."""
    token = await create_user(database_url, "alice")
    async with (
        running_server(settings_for(database_url), generator=UnstorableGenerator()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        events = await generate(client, project, "say something odd")
        history = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
    assert events[-1].event == "done"
    assert history[1]["content"] == "nul \ufffd here, lone \ufffd surrogate"
    assert events[-1].data["message"]["content"] == history[1]["content"]


async def test_head_on_generate_stream_creates_nothing(database_url: str) -> None:
    """Regression: Starlette answers HEAD on every GET route, so a HEAD of a generate-stream URL
    (a prefetching proxy, a link checker) reserved a pair and started an answer."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_delta_ms=100)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        url = f"/api/generate-stream?projectId={project}&message=hi&clientRequestId=head1"
        head = await client.head(url)
        assert head.status_code == 405
        assert head.headers["allow"] == "GET"
        assert head.headers["content-type"] == "application/problem+json"
        assert await _sequences(database_url, project) == []
        # The other GET routes only read; HEAD of an answer's events opens no stream.
        accepted = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "running"},
            headers={"Accept": "application/json"},
        )
        events_url = accepted.json()["events_url"]
        message = accepted.json()["assistant_message"]
        for path in (
            events_url,
            f"/api/projects/{project}/messages/{message['id']}",
            f"/api/projects/{project}/messages",
            f"/api/projects/{project}",
            "/api/projects",
        ):
            response = await asyncio.wait_for(client.head(path), 5)
            assert response.status_code == 200, path
            assert response.content == b""
        assert srv.services.worker.streams.open == 0
    assert await _sequences(database_url, project) == [1, 2]


async def test_open_streams_limit_holds_exactly_under_a_burst(database_url: str) -> None:
    """Regression: the check before the reservation took no slot (a burst passed together) and
    the second check, after submit, answered 503 for answers that had already started."""
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()
    settings = settings_for(database_url, max_streams_per_worker=3)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(token) as client,
    ):
        projects = [await create_project(client, f"p{i}") for i in range(4)]
        statuses: list[int] = []
        refusals: list[httpx.Response] = []
        all_answered = asyncio.Event()

        async def attempt(n: int) -> list[str]:
            url = f"/api/projects/{projects[n % 4]}/generations"
            async with client.stream("POST", url, json={"message": f"m{n}"}) as response:
                statuses.append(response.status_code)
                if len(statuses) == 20:
                    all_answered.set()
                if response.status_code != 200:
                    await response.aread()
                    refusals.append(response)
                    return []
                await all_answered.wait()
                frames = parse_frames(await response.aread())
            return [f.event for f in frames if f.event]

        tasks = [asyncio.create_task(attempt(n)) for n in range(20)]
        try:
            await asyncio.wait_for(all_answered.wait(), 30)
            assert sorted(statuses) == [200] * 3 + [503] * 17
            assert srv.services.worker.streams.open == 3
        finally:
            generator.gate.set()
            all_answered.set()
            names = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for response in refusals:
            assert response.json()["code"] == "too_many_streams"
            assert "retry-after" in response.headers
        # Every started answer got its stream, to the end; a refused request started nothing.
        assert sorted(n[-1] for n in names if n) == ["done"] * 3
        assert await assistant_count(database_url) == 3
        assert srv.services.worker.streams.open == 0


async def _no_stream_open(srv: RunningServer) -> None:
    for _ in range(200):
        if srv.services.worker.streams.open == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{srv.services.worker.streams.open} stream slot(s) still held")


async def test_stream_slots_come_back_on_every_path(database_url: str) -> None:
    """With room for one stream, every way a request can end gives its slot back."""
    token = await create_user(database_url, "alice")
    settings = settings_for(
        database_url, max_streams_per_worker=1, demo_deltas=5, demo_delta_ms=200
    )
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        gen = f"/api/projects/{project}/generations"
        stream_url = f"/api/generate-stream?projectId={project}&message=m&clientRequestId=k1"
        # Refused before or by the reservation: unknown project, a reused key, a bad cursor.
        assert (
            await client.post(f"/api/projects/{uuid.uuid4()}/generations", json={"message": "x"})
        ).status_code == 404
        await _no_stream_open(srv)
        # A stream read to its end.
        response, frames = await read_stream(client, "GET", stream_url)
        assert response.status_code == 200 and frames[-1].event == "done"
        last = frames[-1].id
        await _no_stream_open(srv)
        reused = stream_url.replace("message=m", "message=other")
        assert (await client.get(reused)).status_code == 409
        beyond = await client.get(stream_url, headers={"Last-Event-ID": str(last + 5)})
        assert beyond.status_code == 422
        await _no_stream_open(srv)
        # Nothing left to send: 204.
        assert (
            await client.get(stream_url, headers={"Last-Event-ID": str(last)})
        ).status_code == 204
        await _no_stream_open(srv)
        # A JSON answer holds no stream, even while its generation runs.
        accepted = await client.post(
            gen, json={"message": "bg"}, headers={"Accept": "application/json"}
        )
        assert accepted.status_code == 202
        assert srv.services.worker.streams.open == 0
        # HEAD of the events opens nothing; a client that hangs up mid-stream lets go.
        events_url = accepted.json()["events_url"]
        assert (await client.head(events_url)).status_code == 200
        await _no_stream_open(srv)
        for url, method in ((events_url, "GET"), (gen, "POST")):
            body = {"message": "hang up"} if method == "POST" else None
            async with client.stream(method, url, json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break
                assert srv.services.worker.streams.open == 1
            await _no_stream_open(srv)
        # The one slot is still there.
        events = await generate(client, project, "last")
        assert events[-1].event == "done"
        await _no_stream_open(srv)
