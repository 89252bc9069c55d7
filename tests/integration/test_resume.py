"""Resuming past the first page of stored events (more than 500), through HTTP only.

Black-box on purpose: how events are stored and paged is an implementation detail that may
change; what API.md promises is that resuming from any ``Last-Event-ID`` (header or
``lastEventId``), on any worker, yields each missing event exactly once, in order.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.support import (
    Frame,
    create_project,
    create_user,
    events_only,
    parse_frames,
    read_stream,
    running_server,
    settings_for,
)

DELTAS = 1200
TOTAL = DELTAS + 4  # start, two progress events, the deltas, done
PROMPT = "resume me " * 140  # long enough for the demo answer to split into DELTAS pieces
CURSORS = [0, 1, 3, 250, 499, 500, 501, 502, 700, 999, 1000, 1001, 1150, TOTAL - 3, TOTAL - 1]


def wire(frames: list[Frame]) -> list[tuple[int | None, str | None, list[str]]]:
    return [(f.id, f.event, f.data_lines) for f in frames]


async def _resume(client: httpx.AsyncClient, url: str, cursor: int, how: str) -> list[Frame]:
    if how == "header":
        response, frames = await read_stream(
            client, "GET", url, headers={"Last-Event-ID": str(cursor)}
        )
    else:
        response, frames = await read_stream(client, "GET", f"{url}?lastEventId={cursor}")
    assert response.status_code == 200, (cursor, how, response.text)
    return events_only(frames)


async def test_resume_past_500_stored_events(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=DELTAS, demo_delta_ms=2)
    async with (
        running_server(settings) as a,
        running_server(settings) as b,
        a.client(token) as on_a,
        b.client(token) as on_b,
    ):
        project = await create_project(on_a)
        live: dict[int, asyncio.Task[list[Frame]]] = {}
        buffer = b""
        async with on_a.stream(
            "POST", f"/api/projects/{project}/generations", json={"message": PROMPT}
        ) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                buffer += chunk
                if live:
                    continue
                seen = events_only(parse_frames(buffer[: buffer.rfind(b"\n\n") + 2]))
                if seen and seen[-1].id is not None and seen[-1].id >= 800:
                    # While the answer is still being written: attach on the other server,
                    # which has only the table to read from.
                    message = seen[0].data["assistant_message"]["id"]
                    url = f"/api/projects/{project}/messages/{message}/events"
                    live = {
                        c: asyncio.create_task(_resume(on_b, url, c, "header"))
                        for c in (0, 250, 700)
                    }
        full = events_only(parse_frames(buffer))
        assert [e.id for e in full] == list(range(1, TOTAL + 1))
        assert full[-1].event == "done"
        assert live, "the answer ended before 800 events were sent"
        for cursor, task in live.items():
            assert wire(await asyncio.wait_for(task, 30)) == wire(full[cursor:]), cursor
        # Finished: every cursor, on both servers, as a header and as a query parameter.
        for client in (on_a, on_b):
            for cursor in CURSORS:
                for how in ("header", "query"):
                    got = await _resume(client, url, cursor, how)
                    assert wire(got) == wire(full[cursor:]), (cursor, how)
            done = await client.get(url, headers={"Last-Event-ID": str(TOTAL)})
            assert done.status_code == 204
