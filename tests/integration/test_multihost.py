"""Three server processes behind a round-robin TCP proxy: clients generate and reconnect through
the proxy, landing on other processes, and every invariant of API.md holds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from server.embedded import free_port
from server.generators.demo import demo_answer
from tests.processes import ServerProcess
from tests.support import create_user, parse_frames

pytestmark = pytest.mark.slow


class RoundRobinProxy:
    """Each new client connection goes to the next backend (as a TCP load balancer would)."""

    def __init__(self, backends: list[int]) -> None:
        self._next = itertools.cycle(backends)
        self.port = free_port()
        self.connections: dict[int, int] = dict.fromkeys(backends, 0)
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RoundRobinProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = next(self._next)
        self.connections[backend] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    env = {
        "DEMO_DELTAS": "12",
        "DEMO_DELTA_MS": "60",
        "MAX_RUNNING_PER_USER": "1000",
        "MAX_STREAMS_PER_USER": "100000",
        "RATE_PER_MINUTE": "100000",
        "RATE_BURST": "100000",
    }
    servers = [
        ServerProcess(f"s{i}", database_url, free_port(), tmp_path / f"s{i}.log", env=env)
        for i in range(3)
    ]
    try:
        for server in servers:
            server.start()
        for server in servers:
            await server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _client(base_url: str, token: str) -> httpx.AsyncClient:
    # No keep-alive: every request is a new connection, so the proxy spreads them.
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def _read_some(
    client: httpx.AsyncClient, url: str, count: int, **kwargs: object
) -> list[tuple[int, str, str]]:
    """Read up to ``count`` events, then hang up (or the whole stream when count is 0)."""
    events: list[tuple[int, str, str]] = []
    buffer = ""
    async with client.stream("GET", url, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status_code == 200, await response.aread()
        async for text in response.aiter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                for frame in parse_frames((block + "\n\n").encode()):
                    if frame.event is not None and frame.id is not None:
                        events.append((frame.id, frame.event, frame.data_lines[0]))
                if count and len(events) >= count:
                    return events
    return events


async def test_generate_and_resume_through_a_round_robin_proxy(
    cluster: list[ServerProcess], database_url: str
) -> None:
    token = await create_user(database_url, "alice")
    ports = [s.port for s in cluster]
    async with (
        RoundRobinProxy(ports) as proxy,
        _client(f"http://127.0.0.1:{proxy.port}", token) as client,
    ):
        projects = []
        for i in range(3):
            response = await client.post("/api/projects", json={"title": f"p{i}"})
            projects.append(response.json()["id"])

        async def one(n: int) -> tuple[str, str, list[tuple[int, str, str]]]:
            project = projects[n % 3]
            key = f"k{n}"
            url = f"/api/generate-stream?projectId={project}&message=m{n}&clientRequestId={key}"
            first = await _read_some(client, url, count=3 + n % 5)
            # EventSource's reconnect: the same URL with Last-Event-ID, through the proxy.
            rest = await _read_some(client, url, 0, headers={"Last-Event-ID": str(first[-1][0])})
            message_id = json.loads(first[0][2])["assistant_message"]["id"]
            return project, message_id, first + rest

        results = await asyncio.gather(*(one(n) for n in range(30)))
    assert all(count > 0 for count in proxy.connections.values()), proxy.connections

    for project, _message_id, events in results:
        ids = [e[0] for e in events]
        assert ids == list(range(1, len(ids) + 1)), "exactly once, in order, across processes"
        assert events[-1][1] == "done"
        final = json.loads(events[-1][2])["message"]
        deltas = "".join(json.loads(e[2])["text"] for e in events if e[1] == "delta")
        assert final["content"] == deltas
        assert final["project_id"] == project

    conn = await asyncpg.connect(database_url)
    try:
        for project in projects:
            rows = await conn.fetch(
                "SELECT sequence, role, status, content, client_request_id FROM messages "
                "WHERE project_id = $1 ORDER BY sequence",
                uuid.UUID(project),
            )
            assert [r["sequence"] for r in rows] == list(range(1, len(rows) + 1))
            assert len(rows) == 20
            for user, assistant in zip(rows[0::2], rows[1::2], strict=True):
                assert (user["role"], assistant["role"]) == ("user", "assistant")
                assert user["client_request_id"] == assistant["client_request_id"]
                assert assistant["status"] == "success"
                assert assistant["content"] == demo_answer(user["content"])
    finally:
        await conn.close()
