"""DELETE /api/projects/{id}: the project's running answers end cancelled (their listeners see
it), then the project, its messages and their stored events are gone; another user's project
is 404 and untouched."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx

from tests.support import (
    Frame,
    GatedGenerator,
    create_project,
    create_user,
    events_only,
    parse_frames,
    running_server,
    settings_for,
)


async def _rows(database_url: str, project: str) -> dict[str, int]:
    """What the database still holds of a project, table by table."""
    conn = await asyncpg.connect(database_url)
    try:
        found = {
            table: await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE {column} = $1", uuid.UUID(project)
            )
            for table, column in (("projects", "id"), ("messages", "project_id"))
        }
        # Chunks are keyed by owner and message: the project's, and any left by a deleted
        # message (none but a deleted project's can be).
        found["event_chunks"] = await conn.fetchval(
            "SELECT count(*) FROM event_chunks AS c"
            " WHERE (c.owner_id, c.message_id) IN"
            "       (SELECT created_by, id FROM messages WHERE project_id = $1)"
            "    OR NOT EXISTS (SELECT 1 FROM messages AS m"
            "                   WHERE m.created_by = c.owner_id AND m.id = c.message_id)",
            uuid.UUID(project),
        )
    finally:
        await conn.close()
    return found


async def _running_count(database_url: str, username: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT r.running_generations FROM users AS u"
            " JOIN user_running AS r ON r.user_id = u.id WHERE u.username = $1",
            username,
        )
    finally:
        await conn.close()
    return count


async def _start(client: httpx.AsyncClient, project: str, message: str, **body: Any) -> Any:
    response = await client.post(
        f"/api/projects/{project}/generations",
        json={"message": message, **body},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 202, response.text
    return response.json()


async def _answered(client: httpx.AsyncClient, project: str, count: int) -> None:
    for _ in range(500):
        page = (await client.get(f"/api/projects/{project}/messages")).json()["messages"]
        if len(page) == 2 * count and all(m["status"] == "success" for m in page):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} answers did not finish")


async def test_delete_removes_the_project_its_messages_and_their_events(
    database_url: str,
) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        doomed = await create_project(client, "doomed")
        kept = await create_project(client, "kept")
        for project in (doomed, kept):
            for n in range(2):
                await _start(client, project, f"question {n}")
            await _answered(client, project, 2)
        assert (await _rows(database_url, doomed))["event_chunks"] > 0

        response = await client.delete(f"/api/projects/{doomed}")
        assert response.status_code == 204, response.text
        assert response.content == b""

        assert (await client.get(f"/api/projects/{doomed}")).status_code == 404
        assert (await client.get(f"/api/projects/{doomed}/messages")).status_code == 404
        listed = (await client.get("/api/projects")).json()["projects"]
        assert [p["id"] for p in listed] == [kept]
        again = await client.delete(f"/api/projects/{doomed}")
        assert again.status_code == 404
        assert again.json()["code"] == "not_found"
        # The other project is whole, and can still be written to.
        assert len((await client.get(f"/api/projects/{kept}/messages")).json()["messages"]) == 4
        await _start(client, kept, "still here")
        await _answered(client, kept, 3)

    assert await _rows(database_url, doomed) == {"projects": 0, "messages": 0, "event_chunks": 0}
    kept_rows = await _rows(database_url, kept)
    assert kept_rows["messages"] == 6 and kept_rows["event_chunks"] > 0


async def test_delete_of_another_users_project_is_404_and_deletes_nothing(
    database_url: str,
) -> None:
    alice = await create_user(database_url, "alice")
    bob = await create_user(database_url, "bob")
    async with (
        running_server(settings_for(database_url)) as srv,
        srv.client(alice) as alice_client,
        srv.client(bob) as bob_client,
    ):
        project = await create_project(alice_client, "alice's")
        await _start(alice_client, project, "mine")
        await _answered(alice_client, project, 1)
        before = await _rows(database_url, project)

        for path in (f"/api/projects/{project}", f"/api/projects/{uuid.uuid4()}"):
            refused = await bob_client.delete(path)
            assert refused.status_code == 404, refused.text
            assert refused.json()["code"] == "not_found"
        assert (await bob_client.delete("/api/projects/not-a-uuid")).status_code == 404
        assert (await srv.client().delete(f"/api/projects/{project}")).status_code == 401

        assert await _rows(database_url, project) == before
        assert (await alice_client.get(f"/api/projects/{project}")).status_code == 200


async def _listen(
    client: httpx.AsyncClient, url: str, attached: asyncio.Event, ready: str
) -> list[Frame]:
    """Read an answer's stream to its end; ``attached`` is set once an event named ``ready``
    has arrived (the listener is known to be following the live answer)."""
    frames: list[Frame] = []
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        buffer = b""
        async for chunk in response.aiter_bytes():
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                frames += events_only(parse_frames(block + b"\n\n"))
                if any(frame.event == ready for frame in frames):
                    attached.set()
    return frames


async def test_listeners_of_its_running_answers_see_cancelled_then_the_stream_ends(
    database_url: str,
) -> None:
    """A running answer and one queued behind it: both end `cancelled` (the running one with its
    text so far, the queued one empty) on the streams that follow them, which then end; the
    user's running count comes back to 0."""
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()  # "first ", then waits for a gate that never opens here
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "busy")
        running = await _start(client, project, "one")
        queued = await _start(client, project, "two", on_running="enqueue")
        assert await _running_count(database_url, "alice") == 2
        attached = [asyncio.Event(), asyncio.Event()]
        listeners = [
            asyncio.create_task(_listen(client, running["events_url"], attached[0], "delta")),
            asyncio.create_task(_listen(client, queued["events_url"], attached[1], "progress")),
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(a.wait() for a in attached)), 10)
            response = await client.delete(f"/api/projects/{project}")
            assert response.status_code == 204, response.text
            first, second = await asyncio.wait_for(asyncio.gather(*listeners), 10)
        finally:
            generator.gate.set()
            for task in listeners:
                task.cancel()
        assert await _running_count(database_url, "alice") == 0

    assert [f.event for f in first] == ["start", "delta", "cancelled"]
    assert first[-1].data["message"]["status"] == "cancelled"
    assert first[-1].data["message"]["content"] == "first "
    assert [f.id for f in first] == [1, 2, 3]
    assert [f.event for f in second] == ["start", "progress", "cancelled"]
    assert second[-1].data["message"]["content"] == ""
    assert await _rows(database_url, project) == {"projects": 0, "messages": 0, "event_chunks": 0}


async def test_delete_while_answers_keep_starting_leaves_nothing_behind(
    database_url: str,
) -> None:
    """Generations are requested while the project is deleted: each is either answered (and then
    cancelled by the delete) or refused as 404, never a 500, and nothing of the project is left,
    nor any running answer counted against the user."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=20, demo_delta_ms=20)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "racing")
        await _start(client, project, "a first one")

        statuses: list[int] = []
        started = asyncio.Event()

        async def ask(asker: int) -> None:
            """Ask again and again, through the delete, until the project is gone."""
            for n in range(200):
                response = await client.post(
                    f"/api/projects/{project}/generations",
                    json={"message": f"question {asker}.{n}"},
                    headers={"Accept": "application/json"},
                )
                statuses.append(response.status_code)
                if statuses.count(202) >= 10:
                    started.set()
                if response.status_code != 202:
                    return

        async def delete_meanwhile() -> int:
            await started.wait()
            return (await client.delete(f"/api/projects/{project}")).status_code

        *_, deleted = await asyncio.gather(*(ask(a) for a in range(8)), delete_meanwhile())
        assert deleted == 204
        assert set(statuses) == {202, 404}, statuses

        for _ in range(500):  # answers the delete cancelled let go of the user's running count
            if await _running_count(database_url, "alice") == 0:
                break
            await asyncio.sleep(0.02)
        assert await _running_count(database_url, "alice") == 0
        await asyncio.sleep(0.3)  # their generators' last flushes find nothing to write

    assert await _rows(database_url, project) == {"projects": 0, "messages": 0, "event_chunks": 0}


async def test_deletes_at_once_do_not_hold_every_pooled_connection(database_url: str) -> None:
    """A delete holds a pooled connection (its lock on the project) while its cancel needs
    another: as many deletes at once as the pool has connections each held one and waited for
    a second, forever."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, pool_min_size=1, pool_max_size=2)
    async with running_server(settings) as srv, srv.client(token) as client:
        projects = [await create_project(client, f"p{n}") for n in range(6)]
        deleted = await asyncio.wait_for(
            asyncio.gather(*(client.delete(f"/api/projects/{p}") for p in projects)), 20
        )
        assert [response.status_code for response in deleted] == [204] * 6
        assert (await client.get("/api/projects")).json()["projects"] == []
