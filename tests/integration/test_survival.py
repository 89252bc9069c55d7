"""Survival: real server processes over one database, killed, stopped, cut off and reconnected.

Every test here starts ``python -m server`` as child processes on loopback ports (see
tests/processes.py), except the churn test at the end, which runs the app in-process so that it
can count its asyncio tasks. What each test asserts is a promise of API.md: resuming from any
``Last-Event-ID`` on any worker yields exactly the missing events; every assistant message reaches
exactly one terminal status whatever happens to its client, its worker or the database; exactly
one terminal event ends every stream; a finished message's content equals its joined deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server.db import Database, connect
from server.generators.base import Delta, GenerationContext, Item, Progress
from server.generators.demo import demo_answer
from server.migrate import migrate
from server.reaper import REAP_SLACK_SECONDS
from tests.processes import ServerProcess, Spawn
from tests.support import (
    Frame,
    create_project,
    create_user,
    events_only,
    parse_frames,
    running_server,
    settings_for,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from server.embedded import EmbeddedPostgres, free_port

pytestmark = pytest.mark.slow

TERMINAL = {"done", "error", "cancelled"}
RUNNING = ("pending", "streaming")


# Fixtures and helpers


async def start_all(*procs: ServerProcess) -> None:
    for proc in procs:
        proc.start()
    await asyncio.gather(*(proc.wait_ready() for proc in procs))


class Stream:
    """An SSE response read in the background: frames as they arrive, and how it ended."""

    def __init__(self, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> None:
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.frames: list[Frame] = []
        self.rest = b""  # bytes after the last complete frame when the stream ended
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._run(client, method, url, kwargs))

    async def _run(
        self, client: httpx.AsyncClient, method: str, url: str, kwargs: dict[str, Any]
    ) -> None:
        try:
            async with client.stream(method, url, **kwargs) as response:
                self.status, self.headers = response.status_code, response.headers
                buffer = b""
                async for chunk in response.aiter_raw():
                    buffer += chunk
                    while response.status_code == 200 and b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        self.frames.extend(parse_frames(block + b"\n\n"))
                self.rest = buffer
        except httpx.TransportError as exc:
            self.error = exc

    @property
    def events(self) -> list[Frame]:
        return events_only(self.frames)

    @property
    def ended(self) -> bool:
        return self.task.done()

    async def wait_until(self, predicate: Callable[[list[Frame]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if self.ended:
                raise AssertionError(f"the stream ended first: {wire(self.events)} {self.error}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout}s: {wire(self.events)}")
            await asyncio.sleep(0.01)

    async def finish(self, timeout: float) -> list[Frame]:
        """Wait for the server to end the stream; its events."""
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            raise AssertionError(
                f"the stream is still open after {timeout}s: {wire(self.events)[-3:]}"
            ) from None
        assert self.error is None, f"the stream failed: {self.error!r} after {wire(self.events)}"
        return self.events

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def wire(events: list[Frame]) -> list[tuple[int | None, str | None, list[str]]]:
    """What came over the wire for each event: id, name and the exact data line."""
    return [(e.id, e.event, e.data_lines) for e in events]


def deltas(events: list[Frame]) -> list[str]:
    return [e.data["text"] for e in events if e.event == "delta"]


def assert_complete_log(events: list[Frame], *, after: int = 0) -> Frame:
    """Ids after+1, after+2, ... without gaps; exactly one terminal event, the last. Returns it."""
    assert events, "no events at all"
    assert [e.id for e in events] == list(range(after + 1, after + 1 + len(events))), wire(events)
    names = [e.event for e in events]
    assert names[-1] in TERMINAL, f"the stream did not end with a terminal event: {names}"
    assert sum(1 for n in names if n in TERMINAL) == 1, names
    if after == 0:
        assert names[0] == "start"
    return events[-1]


def gen_url(project: str) -> str:
    return f"/api/projects/{project}/generations"


def events_url(project: str, message: str) -> str:
    return f"/api/projects/{project}/messages/{message}/events"


def message_url(project: str, message: str) -> str:
    return f"/api/projects/{project}/messages/{message}"


async def start_json(
    client: httpx.AsyncClient, project: str, message: str, **body: Any
) -> dict[str, Any]:
    """Start a generation without a listener (202); the accepted pair."""
    response = await client.post(
        gen_url(project), json={"message": message, **body}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def replay(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[int, list[Frame]]:
    """A finished stream read to its end (bounded in time)."""
    stream = Stream(client, "GET", url, **kwargs)
    events = await stream.finish(20)
    assert stream.error is None, stream.error
    assert stream.rest == b"", f"a partial frame at the end: {stream.rest!r}"
    assert stream.status is not None
    return stream.status, events


async def db_rows(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def running_counts(url: str) -> list[int]:
    """Every user's count of running generations (the per-user cap's counter)."""
    rows = await db_rows(url, "SELECT DISTINCT running_generations AS n FROM user_running")
    return sorted(r["n"] for r in rows)


async def running_messages(url: str) -> list[asyncpg.Record]:
    return await db_rows(
        url, "SELECT id, status FROM messages WHERE status IN ('pending', 'streaming')"
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 0.1
) -> float:
    """Poll ``check`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - started


# 1. Resume on another worker, from any Last-Event-ID, byte for byte


async def test_resume_on_another_process_from_any_last_event_id(
    database_url: str, spawn: Spawn
) -> None:
    token = await create_user(database_url, "alice")
    settings = {"demo_deltas": 10, "demo_delta_ms": 100, "lease_seconds": 2}
    a, b = spawn("A", database_url, **settings), spawn("B", database_url, **settings)
    await start_all(a, b)
    prompt = "Resume me on the other worker, please \U0001f600"
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)
        live = Stream(on_a, "POST", gen_url(project), json={"message": prompt})
        await live.wait_until(lambda ev: len(ev) >= 5, 10)
        message = live.events[0].data["assistant_message"]["id"]
        url = events_url(project, message)
        # While it runs: attach on B from the middle and from the live edge, by header and query.
        edge = live.events[-1].id
        assert edge is not None
        running = {
            ("header", 3): Stream(on_b, "GET", url, headers={"Last-Event-ID": "3"}),
            ("query", 2): Stream(on_b, "GET", f"{url}?lastEventId=2"),
            ("header", edge): Stream(on_b, "GET", url, headers={"Last-Event-ID": str(edge)}),
        }
        original = await live.finish(15)
        assert live.status == 200 and live.error is None
        done = assert_complete_log(original)
        assert done.event == "done"
        assert "".join(deltas(original)) == done.data["message"]["content"] == demo_answer(prompt)
        last = done.id
        assert last is not None
        for (how, n), stream in running.items():
            events = await stream.finish(15)
            assert stream.status == 200, (how, n)
            assert wire(events) == wire(original[n:]), f"live attach on B, {how} {n}"

        # After it finished: every cursor, by header and by query parameter.
        for n in sorted({0, 1, 2, last // 2, last - 2, last - 1}):
            status, events = await replay(on_b, url, headers={"Last-Event-ID": str(n)})
            assert status == 200
            assert wire(events) == wire(original[n:]), f"Last-Event-ID: {n} on B"
            assert_complete_log(events, after=n)
            status, events = await replay(on_b, f"{url}?lastEventId={n}")
            assert status == 200
            assert wire(events) == wire(original[n:]), f"lastEventId={n} on B"
        # The client has everything: nothing more is sent, and the stream closes.
        for kwargs in (
            {"headers": {"Last-Event-ID": str(last)}},
            {"params": {"lastEventId": last}},
        ):
            status, events = await replay(on_b, url, **kwargs)
            assert status in (200, 204) and events == [], kwargs
        # And the producing worker answers the same from its table.
        _, events = await replay(on_a, url, headers={"Last-Event-ID": "0"})
        assert wire(events) == wire(original)

        # 9. A cursor that is not a number, negative, huge or beyond the log: 4xx, never 5xx.
        for bad in ("abc", "-1", "1.5", "99999999999999999999999", str(last + 1), str(2**31)):
            for kwargs in ({"headers": {"Last-Event-ID": bad}}, {"params": {"lastEventId": bad}}):
                response = await on_b.get(url, **kwargs)
                assert 400 <= response.status_code < 500, (bad, kwargs, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["status"] == response.status_code
    assert a.running and b.running


# 2. A client that goes away does not take its generation with it


async def test_disconnect_right_after_start_still_finishes(database_url: str, spawn: Spawn) -> None:
    token = await create_user(database_url, "alice")
    settings = {"demo_deltas": 10, "demo_delta_ms": 100}
    a, b = spawn("A", database_url, **settings), spawn("B", database_url, **settings)
    await start_all(a, b)
    prompt = "Hang up on me"
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)
        async with on_a.stream("POST", gen_url(project), json={"message": prompt}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    start = parse_frames(f"event: start\n{line}\n\n".encode())[0].data
                    break
        # The connection is closed: the generation runs on and finishes by itself.
        message = start["assistant_message"]["id"]
        assert start["assistant_message"]["status"] == "pending"

        async def finished() -> bool:
            found = (await on_b.get(message_url(project, message))).json()
            return bool(found["status"] not in RUNNING)

        await eventually(finished, 15, "the abandoned generation to finish")
        history = (await on_b.get(f"/api/projects/{project}/messages")).json()["messages"]
        assert [m["sequence"] for m in history] == [1, 2]
        assert history[1]["id"] == message
        assert history[1]["status"] == "success"
        assert history[1]["content"] == demo_answer(prompt)
        _, events = await replay(on_b, events_url(project, message))
        assert assert_complete_log(events).event == "done"
        assert "".join(deltas(events)) == demo_answer(prompt)


# 3. Cancel from another worker


async def test_cancel_from_the_other_process(database_url: str, spawn: Spawn) -> None:
    token = await create_user(database_url, "alice")
    settings = {"demo_deltas": 20, "demo_delta_ms": 150}
    a, b = spawn("A", database_url, **settings), spawn("B", database_url, **settings)
    await start_all(a, b)
    prompt = "Cancel me halfway through"
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)
        listener_a = Stream(on_a, "POST", gen_url(project), json={"message": prompt})
        await listener_a.wait_until(lambda ev: len(ev) >= 1, 10)
        message = listener_a.events[0].data["assistant_message"]["id"]
        listener_b = Stream(on_b, "GET", events_url(project, message))
        await listener_a.wait_until(lambda ev: len(deltas(ev)) >= 3, 10)
        await listener_b.wait_until(lambda ev: len(deltas(ev)) >= 1, 10)

        response = await on_b.post(f"{message_url(project, message)}/cancel")
        assert response.status_code == 202, response.text
        cancelled = response.json()["message"]
        assert cancelled["id"] == message
        assert cancelled["status"] == "cancelled"

        seen = {}
        for name, listener in (("A", listener_a), ("B", listener_b)):
            events = await listener.finish(10)
            terminal = assert_complete_log(events)
            assert terminal.event == "cancelled", (name, wire(events[-2:]))
            assert terminal.data["message"]["status"] == "cancelled"
            seen[name] = events
        final = (await on_b.get(message_url(project, message))).json()
        assert final["status"] == "cancelled"
        full = demo_answer(prompt)
        for name, events in seen.items():
            assert "".join(deltas(events)) == final["content"], f"listener on {name}"
            assert events[-1].data["message"]["content"] == final["content"]
        assert final["content"] == cancelled["content"]
        assert final["content"], "the partial content is kept"
        assert full.startswith(final["content"]) and final["content"] != full
        assert wire(seen["A"]) == wire(seen["B"])

        # Cancelling again, on either worker, is a conflict; and nothing changes afterwards,
        # even when the generator would have finished by now.
        for client in (on_a, on_b):
            again = await client.post(f"{message_url(project, message)}/cancel")
            assert again.status_code == 409, again.text
            assert again.headers["content-type"] == "application/problem+json"
        await asyncio.sleep(20 * 0.15)
        later = (await on_a.get(message_url(project, message))).json()
        assert (later["status"], later["content"]) == ("cancelled", final["content"])
        assert later["updated_at"] == final["updated_at"]
        _, events = await replay(on_a, events_url(project, message))
        assert wire(events) == wire(seen["A"])


# 4. kill -9


async def test_kill_9_is_reaped_by_the_other_process(database_url: str, spawn: Spawn) -> None:
    token = await create_user(database_url, "alice")
    lease = 2.0
    settings = {"demo_deltas": 100, "demo_delta_ms": 100, "lease_seconds": lease}
    a, b = spawn("A", database_url, **settings), spawn("B", database_url, **settings)
    await start_all(a, b)
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)
        accepted = [await start_json(on_a, project, f"Doomed answer {i}") for i in range(4)]
        messages = [pair["assistant_message"]["id"] for pair in accepted]
        listeners = [Stream(on_b, "GET", events_url(project, m)) for m in messages]
        for listener in listeners:
            await listener.wait_until(lambda ev: len(deltas(ev)) >= 1, 10)

        a.kill()
        killed_at = time.monotonic()
        for listener in listeners:
            events = await listener.finish(lease + 6)
            terminal = assert_complete_log(events)
            assert terminal.event == "error", wire(events[-2:])
            assert terminal.data["error"]["code"] == "interrupted"
            assert terminal.data["message"]["status"] == "error"
            assert terminal.data["message"]["content"] == "".join(deltas(events))
        elapsed = time.monotonic() - killed_at
        # The contract's bound (docs/api.md): within LEASE_SECONDS of the worker's last heartbeat,
        # plus the reaper's slack; the listeners on B then need one NOTIFY and one read.
        bound = lease + REAP_SLACK_SECONDS + 1.0
        assert elapsed <= bound, f"reaped {elapsed:.1f}s after the kill (lease {lease}s)"
        assert await running_messages(database_url) == []
        assert await running_counts(database_url) == [0], "the reaper gives the counts back"
        for message in messages:
            found = (await on_b.get(message_url(project, message))).json()
            assert found["status"] == "error" and found["error"]["code"] == "interrupted"
        # The survivor still serves: a new generation on B completes.
        fresh = await start_json(on_b, project, "After the crash")
        assert fresh["assistant_message"]["sequence"] == 2 * len(messages) + 2
        await listeners[0].close()


async def test_kill_9_then_restart_alone_reaps_its_own(database_url: str, spawn: Spawn) -> None:
    token = await create_user(database_url, "alice")
    lease = 2.0
    a = spawn("A", database_url, demo_deltas=100, demo_delta_ms=100, lease_seconds=lease)
    await start_all(a)
    async with a.client(token) as on_a:
        project = await create_project(on_a)
        messages = [
            (await start_json(on_a, project, f"Doomed answer {i}"))["assistant_message"]["id"]
            for i in range(3)
        ]

        async def all_streaming() -> bool:
            rows = await running_messages(database_url)
            return len(rows) == 3 and all(r["status"] == "streaming" for r in rows)

        await eventually(all_streaming, 10, "the generations to stream")
    a.kill()
    a.start()  # the same process, alone: nobody else is there to reap
    await a.wait_ready()
    restarted_at = time.monotonic()
    async with a.client(token) as on_a:
        listener = Stream(on_a, "GET", events_url(project, messages[0]))

        async def none_running() -> bool:
            return await running_messages(database_url) == []

        took = await eventually(none_running, lease + 5, "the restarted process to reap")
        bound = lease + REAP_SLACK_SECONDS + 1.0
        assert took <= bound, f"reaped {took:.1f}s after the restart (lease {lease}s)"
        events = await listener.finish(5)
        terminal = assert_complete_log(events)
        assert terminal.event == "error" and terminal.data["error"]["code"] == "interrupted"
        assert terminal.data["message"]["content"] == "".join(deltas(events))
        for message in messages:
            found = (await on_a.get(message_url(project, message))).json()
            assert found["status"] == "error" and found["error"]["code"] == "interrupted"
    assert time.monotonic() - restarted_at < lease + 10


# 5. SIGTERM


async def test_sigterm_drains_and_ends_every_stream(database_url: str, spawn: Spawn) -> None:
    token = await create_user(database_url, "alice")
    grace = 2.0
    settings = {
        "demo_deltas": 100,
        "demo_delta_ms": 100,  # 10 s: longer than the grace period
        "shutdown_grace_seconds": grace,
        "lease_seconds": 5,
    }
    a, b = spawn("A", database_url, **settings), spawn("B", database_url, **settings)
    await start_all(a, b)
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)
        # Listeners on A: two generations' own streams and one attached stream; one on B.
        own = [
            Stream(on_a, "POST", gen_url(project), json={"message": f"Stream {i}"})
            for i in range(2)
        ]
        for stream in own:
            await stream.wait_until(lambda ev: len(ev) >= 1, 10)
        background = await start_json(on_a, project, "No listener of its own")
        attached_a = Stream(on_a, "GET", events_url(project, background["assistant_message"]["id"]))
        first = own[0].events[0].data["assistant_message"]["id"]
        attached_b = Stream(on_b, "GET", events_url(project, first))
        listeners = {"own 0": own[0], "own 1": own[1], "attached A": attached_a, "B": attached_b}
        for listener in listeners.values():
            await listener.wait_until(lambda ev: len(deltas(ev)) >= 1, 10)

        a.send(signal.SIGTERM)
        signalled = time.monotonic()
        code = await a.wait_exit(grace + 8)
        exited = time.monotonic() - signalled
        assert code is not None, f"still running {grace + 8}s after SIGTERM:\n{a.log_tail()}"
        assert exited <= grace + 4, f"exited {exited:.1f}s after SIGTERM (grace {grace}s)"

        for name, listener in listeners.items():
            events = await listener.finish(5)
            terminal = assert_complete_log(events)
            assert terminal.event == "error", (name, wire(events[-2:]))
            assert terminal.data["error"]["code"] == "server_shutdown", name
            assert terminal.data["message"]["content"] == "".join(deltas(events)), name
        assert await running_messages(database_url) == []
        assert await running_counts(database_url) == [0], "shutdown gives the counts back"
        history = (await on_b.get(f"/api/projects/{project}/messages")).json()["messages"]
        assistants = [m for m in history if m["role"] == "assistant"]
        assert len(assistants) == 3
        for found in assistants:
            assert found["status"] == "error" and found["error"]["code"] == "server_shutdown"
            _, events = await replay(on_b, events_url(project, found["id"]))
            assert "".join(deltas(events)) == found["content"]
            assert assert_complete_log(events).data["message"] == found
    assert b.running


# 6. The database goes away and comes back


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL this test may stop and start (whatever TEST_DATABASE_URL says).

    Its data lives outside pytest's temporary directory: as root, PostgreSQL runs as another user
    that must traverse the path, and every pytest session that starts meanwhile resets
    /tmp/pytest-of-root to mode 0700.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="orderly-outage-"))
    server = EmbeddedPostgres(data_dir / "pg", free_port(), durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_database_outage(own_postgres: EmbeddedPostgres, spawn: Spawn) -> None:
    async with connect(own_postgres.url) as session:
        await session.execute_sql('CREATE DATABASE "orderly_outage"')
    url = own_postgres.url.rsplit("/", 1)[0] + "/orderly_outage"
    async with connect(url) as session:
        await migrate(session)
    token = await create_user(url, "alice")
    # The leases outlive the outage: the generations are expected to finish as if nothing happened.
    # Pings keep the listener's connection busy while no event can be written.
    a = spawn("A", url, demo_deltas=40, demo_delta_ms=150, lease_seconds=30, ping_seconds=1)
    await start_all(a)
    async with a.client(token, timeout=httpx.Timeout(10.0)) as client:
        project = await create_project(client)
        background = [
            (await start_json(client, project, f"Survive the outage {i}"))["assistant_message"]
            for i in range(3)
        ]
        listener = Stream(client, "POST", gen_url(project), json={"message": "Listen through it"})
        await listener.wait_until(lambda ev: len(deltas(ev)) >= 2, 10)

        own_postgres.stop()
        stopped = time.monotonic()
        refusals = 0
        while time.monotonic() - stopped < 4:
            response = await client.post(gen_url(project), json={"message": "During the outage"})
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["status"] == 503 and problem["code"]
            ready = await client.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert (await client.get("/healthz")).status_code == 200
            refusals += 1
            await asyncio.sleep(0.5)
        assert refusals >= 3
        own_postgres.start()

        # New work is accepted again without a restart (once the pool has reconnected).
        async def accepts() -> bool:
            response = await client.post(
                gen_url(project),
                json={"message": "After the outage"},
                headers={"Accept": "application/json"},
            )
            assert response.status_code in (202, 503), response.text
            if response.status_code == 202:
                background.append(response.json()["assistant_message"])
            return response.status_code == 202

        await eventually(accepts, 15, "a new generation after the outage", step=0.25)
        assert (await client.get("/readyz")).status_code == 200

        events = await listener.finish(30)
        terminal = assert_complete_log(events)
        assert terminal.event == "done", wire(events[-2:])
        assert "".join(deltas(events)) == terminal.data["message"]["content"]
        assert terminal.data["message"]["content"] == demo_answer("Listen through it")

        async def none_running() -> bool:
            return await running_messages(url) == []

        await eventually(none_running, 30, "every message to finish")
        for message in background:
            found = (await client.get(message_url(project, message["id"]))).json()
            _, events = await replay(client, events_url(project, message["id"]))
            terminal = assert_complete_log(events)
            assert "".join(deltas(events)) == found["content"], found["id"]
            assert terminal.data["message"] == found
            assert found["status"] == "success", found
            assert found["content"] == demo_answer(found_prompt(events))
        sequences = await db_rows(url, "SELECT sequence FROM messages ORDER BY sequence")
        assert [r["sequence"] for r in sequences] == list(range(1, 2 * len(background) + 3))


def found_prompt(events: list[Frame]) -> str:
    prompt: str = events[0].data["user_message"]["content"]
    return prompt


# 7. A listener that never reads


def _raw_get(port: int, path: str, token: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
    sock.connect(("127.0.0.1", port))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\nLast-Event-ID: 0\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def _tcp_wmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


def _read_to_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything until EOF (or a reset); and whether that end came within ``timeout``."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(received), False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(received), False
        except ConnectionResetError:
            return bytes(received), True
        if not chunk:
            return bytes(received), True
        received += chunk


async def test_a_listener_that_never_reads_is_disconnected(database_url: str, spawn: Spawn) -> None:
    token = await create_user(database_url, "alice")
    send_timeout = 1.0
    # The answer echoes the prompt: the prompt's size in `start`, again in the deltas, again in
    # `done`. The server's kernel send buffer alone grows up to tcp_wmem's maximum (4 MB by
    # default), so the stream must be larger than that, or it fits in the buffers and no send
    # ever waits: with 2.5 MB, `start` and the deltas already make 5 MB.
    chars = max(2_500_000, (_tcp_wmem_max() + 1_000_000) // 2)
    prompt = ("lorem ipsum " * (chars // 12 + 1))[:chars]
    a = spawn(
        "A",
        database_url,
        demo_deltas=20,
        demo_delta_ms=300,  # 6 s
        send_timeout_seconds=send_timeout,
        ping_seconds=0.5,
        max_message_chars=chars,
        max_body_bytes=chars + 1_000_000,
    )
    await start_all(a)
    async with a.client(token) as client:
        project = await create_project(client)
        message = (await start_json(client, project, prompt))["assistant_message"]["id"]
        sock = _raw_get(a.port, events_url(project, message), token)
        try:
            # Never read while the generation runs; the server stays responsive meanwhile.
            await asyncio.sleep(send_timeout + 2)
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.sleep(1)
            # Now read what is there: the server gave up on us, so the stream is cut short
            # (no terminal event) and ends, instead of going on once we read. (uvicorn closes
            # the connection gracefully: what it had queued is still delivered before the EOF.)
            loop = asyncio.get_running_loop()
            received, ended = await loop.run_in_executor(None, _read_to_eof, sock, 20.0)
        finally:
            sock.close()
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        assert ended, f"the connection is still open: {len(received)} bytes read"
        for name in (b"\nevent: done\n", b"\nevent: error\n", b"\nevent: cancelled\n"):
            assert name not in received, f"the whole stream was sent ({len(received)} bytes)"

        # The generation itself went on without its slow listener.
        async def finished() -> bool:
            found = (await client.get(message_url(project, message))).json()
            return bool(found["status"] not in RUNNING)

        await eventually(finished, 15, "the generation to finish")
        found = (await client.get(message_url(project, message))).json()
        assert found["status"] == "success" and found["content"] == demo_answer(prompt)
    assert a.running


# 8. Fencing: a fenced-off owner's late writes change nothing


async def test_fenced_owner_cannot_write_after_the_reaper(database_url: str, spawn: Spawn) -> None:
    token = await create_user(database_url, "alice")
    deltas_count, delta_ms = 40, 100
    # A owns the generation and renews its heartbeat only every 5 s; B reaps every 0.2 s.
    a = spawn("A", database_url, demo_deltas=deltas_count, demo_delta_ms=delta_ms, lease_seconds=30)
    b = spawn("B", database_url, lease_seconds=0.6)
    await start_all(a, b)
    async with a.client(token) as on_a, b.client(token) as on_b:
        project = await create_project(on_a)
        listener = Stream(on_a, "POST", gen_url(project), json={"message": "Fence me"})
        await listener.wait_until(lambda ev: len(deltas(ev)) >= 3, 10)
        started = time.monotonic()
        message = uuid.UUID(listener.events[0].data["assistant_message"]["id"])

        # A's heartbeat expires (as if A had been paused past its lease): it is never renewed
        # again, and B's reaper closes A's message.
        await db_rows(
            database_url,
            "UPDATE workers SET expires_at = now() - interval '1 second' WHERE pid = $1",
            a.pid,
        )

        async def reaped() -> bool:
            rows = await db_rows(database_url, "SELECT status FROM messages WHERE id = $1", message)
            return bool(rows[0]["status"] == "error")

        await eventually(reaped, 6, "the reaper to close the message")
        select = (
            "SELECT status, error_code, content, last_event_id, updated_at, lease_owner "
            "FROM messages WHERE id = $1"
        )
        after_reap = dict((await db_rows(database_url, select, message))[0])
        assert after_reap["status"] == "error" and after_reap["error_code"] == "interrupted"
        assert after_reap["lease_owner"] is None

        events = await listener.finish(10)
        terminal = assert_complete_log(events)
        assert terminal.event == "error" and terminal.data["error"]["code"] == "interrupted"
        assert "".join(deltas(events)) == after_reap["content"]
        assert terminal.id == after_reap["last_event_id"]

        # Let the owner's generator run to where it would have finished, and a little more.
        remaining = deltas_count * delta_ms / 1000 - (time.monotonic() - started)
        await asyncio.sleep(max(0.0, remaining) + 1.5)
        later = dict((await db_rows(database_url, select, message))[0])
        assert later == after_reap, "a fenced-off owner changed the message"
        stored = await db_rows(
            database_url,
            "SELECT max(first_event_id + length(kinds) - 1) AS last FROM event_chunks "
            "WHERE message_id = $1 AND kinds <> 't'",
            message,
        )
        assert stored[0]["last"] < after_reap["last_event_id"], "events written after the end"
        _, replayed = await replay(on_b, events_url(project, str(message)))
        assert wire(replayed) == wire(events)
        assert after_reap["content"] != demo_answer("Fence me")
    assert a.running and b.running


# 10. Connect/disconnect churn leaks neither tasks nor memory


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class HeldGenerator:
    """Prompts starting with "quick" finish at once; the others write a little, then hold (until
    the server shuts down), so that their logs do not grow while the listeners churn."""

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Progress("writing", "Writing the answer", 0.0)
        yield Delta("Some text. ")
        if context.prompt.startswith("quick"):
            return
        yield Delta("More is coming...")
        await asyncio.sleep(3600)


async def test_connect_disconnect_churn_leaks_nothing(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, shutdown_grace_seconds=0.5)
    async with (
        running_server(settings, generator=HeldGenerator()) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        urls = []
        for prompt in ("quick, finished", "running 1", "running 2", "running 3"):
            urls.append((await start_json(client, project, prompt))["events_url"])

        async def four_events() -> bool:
            statuses = [
                (await client.get(url.removesuffix("/events"))).json()["status"] for url in urls
            ]
            return statuses == ["success", "streaming", "streaming", "streaming"]

        await eventually(four_events, 10, "one finished and three running generations")
        server = srv.server

        async def cycle(i: int) -> None:
            # The finished one is read from the table, the running ones from memory.
            headers = {"Last-Event-ID": str(i % 3)}
            async with client.stream("GET", urls[i % len(urls)], headers=headers) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break

        async def churn(cycles: int, start: int) -> None:
            queue = iter(range(start, start + cycles))

            async def worker() -> None:
                for i in queue:
                    await cycle(i)

            await asyncio.gather(*(worker() for _ in range(8)))

        def counts() -> tuple[int, int, int]:
            gc.collect()
            tasks = len(asyncio.all_tasks())
            return tasks, len(server.server_state.connections), _rss_kib(os.getpid())

        began = time.monotonic()
        await churn(500, 0)  # warm-up: caches, pools, allocator arenas
        await asyncio.sleep(0.5)
        tasks_before, connections_before, rss_before = counts()
        await churn(1500, 500)
        churn_seconds = time.monotonic() - began

        async def settled() -> bool:
            tasks, connections, _ = counts()
            return tasks <= tasks_before and connections <= connections_before

        await eventually(settled, 10, "tasks and connections to return to where they were")
        await asyncio.sleep(0.5)
        tasks_after, connections_after, rss_after = counts()
        print(f"tasks {tasks_before} -> {tasks_after}, RSS {rss_before} -> {rss_after} KiB")
        assert tasks_after <= tasks_before, (tasks_before, tasks_after)
        assert connections_after <= connections_before
        assert rss_after <= rss_before * 1.05, f"RSS {rss_before} KiB -> {rss_after} KiB"
        assert churn_seconds < 60
        assert srv.services.worker.notifier.waiting == 0
        # The generations were not disturbed by their listeners coming and going.
        for url in urls[1:]:
            message = (await client.get(url.removesuffix("/events"))).json()
            assert message["status"] == "streaming"
            assert message["content"] == "Some text. More is coming..."


async def test_a_stopping_server_drops_a_connection_that_is_never_handed_back(
    database_url: str,
) -> None:
    """Regression (a fresh-clone ``make test-citus``): a draining server did not exit within
    30 s. asyncpg's ``Pool.close`` waits without a bound for every connection to be handed back;
    ``Database.close`` drops the ones still held once its budget is spent."""
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    held = asyncio.Event()
    pids: list[int] = []

    async def hold() -> None:
        async with db.pool.acquire() as conn:
            pids.append(conn.get_server_pid())
            held.set()
            await conn.execute("SELECT pg_sleep(3600)")

    holder = asyncio.create_task(hold())
    await held.wait()
    await asyncio.wait_for(db.close(timeout=0.5), 15)
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await asyncio.wait_for(holder, 15)  # its connection was dropped under it
    assert db.pool._closed
    # A dropped client does not stop its backend's statement: end it (the database is dropped).
    # (Citus adds pg_terminate_backend(bigint) for its global process ids: the pid is an int.)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_terminate_backend($1::integer)", pids[0])
    finally:
        await conn.close()
