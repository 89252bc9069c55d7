"""Cancel: the answer ends as cancelled with its text so far, and the user's running count (the
`running_generations` column behind MAX_RUNNING_PER_USER) comes back, exactly once."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from tests.support import (
    GatedGenerator,
    create_project,
    create_user,
    events_only,
    read_stream,
    running_server,
    settings_for,
)


async def _running_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT r.running_generations FROM users AS u "
            "JOIN user_running AS r ON r.user_id = u.id WHERE u.username = 'alice'"
        )
    finally:
        await conn.close()
    return count


async def _start(client: httpx.AsyncClient, project: str, message: str) -> dict[str, str]:
    accepted = await client.post(
        f"/api/projects/{project}/generations",
        json={"message": message},
        headers={"Accept": "application/json"},
    )
    assert accepted.status_code == 202, accepted.text
    return {
        "url": f"/api/projects/{project}/messages/{accepted.json()['assistant_message']['id']}",
        "events": accepted.json()["events_url"],
    }


async def test_running_generations_is_back_to_0_after_cancel(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()
    settings = settings_for(database_url, max_running_per_user=3)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client)
        answers = [await _start(client, project, f"m{n}") for n in range(3)]
        assert await _running_count(database_url) == 3
        try:
            cancelled = await client.post(f"{answers[0]['url']}/cancel")
            assert cancelled.status_code == 202
            assert await _running_count(database_url) == 2
            again = await client.post(f"{answers[0]['url']}/cancel")
            assert again.status_code == 409
            await asyncio.sleep(0.3)  # the runner stops it, the flusher skips it: no second -1
            assert await _running_count(database_url) == 2
            assert (await client.post(f"{answers[1]['url']}/cancel")).status_code == 202
            assert await _running_count(database_url) == 1
        finally:
            generator.gate.set()
        _response, frames = await read_stream(client, "GET", answers[2]["events"])
        assert events_only(frames)[-1].event == "done"
        assert await _running_count(database_url) == 0
        # The cancelled answers kept their status; the freed places are usable again.
        for answer in answers[:2]:
            assert (await client.get(answer["url"])).json()["status"] == "cancelled"
        generator.gate = asyncio.Event()
        try:
            more = [await _start(client, project, f"again{n}") for n in range(3)]
            assert await _running_count(database_url) == 3
            for answer in more:
                assert (await client.post(f"{answer['url']}/cancel")).status_code == 202
            await asyncio.sleep(0.3)
            assert await _running_count(database_url) == 0
        finally:
            generator.gate.set()
