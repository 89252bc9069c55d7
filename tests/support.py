"""Test support: a real server on a loopback port, users with tokens, and an SSE wire parser."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import uvicorn

from server.app import create_app
from server.auth import issue_token
from server.config import Settings
from server.generators.base import Delta, GenerationContext, Generator, Item
from server.services import Services
from server.store import Store


@dataclass
class RunningServer:
    base_url: str
    server: uvicorn.Server
    app: Any

    @property
    def services(self) -> Services:
        found: Services = self.app.state.services
        return found

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        timeout = kwargs.pop("timeout", httpx.Timeout(30.0))
        # Idle connections expire here well before uvicorn closes them (timeout_keep_alive, 5 s):
        # with both at 5 s, a request sent on a connection the server was closing at that moment
        # failed with ReadError (test_sequencing.py, once, in a CI run on PostgreSQL 15).
        limits = httpx.Limits(
            max_connections=1000, max_keepalive_connections=100, keepalive_expiry=2.0
        )
        return httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, limits=limits, **kwargs
        )


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, *, generator: Generator | None = None
) -> AsyncIterator[RunningServer]:
    """The whole app under uvicorn on 127.0.0.1 (a free port), in this event loop."""
    app = create_app(settings, generator=generator)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", server, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def settings_for(database_url: str, **overrides: Any) -> Settings:
    base = Settings(
        database_url=database_url,
        demo_deltas=5,
        demo_delta_ms=0,
        ping_seconds=15,
        flush_interval_ms=5,
        flush_delay_ms=10,
        pool_max_size=20,
        token_cache_seconds=0.0,
        max_running_per_user=100_000,
        max_streams_per_user=100_000,
        rate_per_minute=1_000_000,
        rate_burst=1_000_000,
        auth_failures_per_minute=1_000_000,
        auth_failures_burst=1_000_000,
        auth_failures_worker_per_minute=1_000_000,
    )
    return dataclasses.replace(base, **overrides)


class GatedGenerator:
    """Answers "first " at once, then wait for the test to open ``gate`` before "second": an
    answer that stays running, with a stream that stays open, as long as the test needs."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Delta("first ")
        await self.gate.wait()
        yield Delta("second")


async def create_user(database_url: str, username: str) -> str:
    async with Store.single(database_url) as store:
        return await issue_token(store, username)


@dataclass
class Frame:
    """One SSE event as it came over the wire."""

    id: int | None = None
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def data(self) -> Any:
        assert len(self.data_lines) == 1, f"expected one data line, got {self.data_lines}"
        return json.loads(self.data_lines[0])


def parse_frames(raw: bytes) -> list[Frame]:
    """A strict parser of the wire format API.md promises (LF line endings, blank line ends)."""
    text = raw.decode("utf-8")
    frames = []
    for block in text.split("\n\n"):
        if not block:
            continue
        frame = Frame()
        for line in block.split("\n"):
            name, sep, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            assert sep, f"line without colon: {line!r}"
            if name == "":
                frame.comments.append(value)
            elif name == "id":
                frame.id = int(value)
            elif name == "event":
                frame.event = value
            elif name == "data":
                frame.data_lines.append(value)
            elif name == "retry":
                frame.retry = int(value)
            else:
                raise AssertionError(f"unexpected field {name!r}")
        frames.append(frame)
    return frames


def events_only(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.event is not None]


async def read_stream(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, list[Frame]]:
    """Send a request and read its SSE body to the end."""
    async with client.stream(method, url, **kwargs) as response:
        body = await response.aread()
    return response, parse_frames(body) if response.status_code == 200 else []


async def generate(
    client: httpx.AsyncClient, project_id: str, message: str, **body: Any
) -> list[Frame]:
    response, frames = await read_stream(
        client,
        "POST",
        f"/api/projects/{project_id}/generations",
        json={"message": message, **body},
    )
    assert response.status_code == 200, response.text
    return events_only(frames)


async def create_project(client: httpx.AsyncClient, title: str = "a project") -> str:
    response = await client.post("/api/projects", json={"title": title})
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


async def assistant_count(database_url: str) -> int:
    """How many assistant messages the database holds (a refused request writes none)."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'")
    finally:
        await conn.close()
    return count
