"""Renaming a project (``PATCH /api/projects/{project_id}``): the same rules as at creation, the
caller's projects only, and never at the cost of the sequence that reservations keep on the same
row."""

from __future__ import annotations

import asyncio

from tests.support import create_project, create_user, running_server, settings_for


async def test_a_rename_is_seen_everywhere_the_title_is(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client, "first title")
        before = (await client.get(f"/api/projects/{project}")).json()
        response = await client.patch(f"/api/projects/{project}", json={"title": "  Second  "})
        assert response.status_code == 200, response.text
        renamed = response.json()
        # Only the title changes; it is kept as given, as at creation.
        assert renamed == {**before, "title": "  Second  "}
        assert (await client.get(f"/api/projects/{project}")).json() == renamed
        listed = (await client.get("/api/projects")).json()["projects"]
        assert [p["title"] for p in listed if p["id"] == project] == ["  Second  "]
        missing = await client.patch(
            "/api/projects/00000000-0000-0000-0000-000000000000", json={"title": "x"}
        )
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_renames_during_reservations_keep_every_sequence(database_url: str) -> None:
    """Renames and reservations take the project's row lock, at once and many times: every
    pair keeps its sequences (1..2n, no gap, no repeat) and the title is one of those sent."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client, "t0")
        n = 30
        titles = [f"t{i}" for i in range(1, n + 1)]

        async def reserve(i: int) -> None:
            response = await client.post(
                f"/api/projects/{project}/generations",
                json={"message": f"m{i}"},
                headers={"Accept": "application/json"},
            )
            assert response.status_code == 202, response.text

        async def rename(title: str) -> None:
            response = await client.patch(f"/api/projects/{project}", json={"title": title})
            assert response.status_code == 200, response.text

        await asyncio.gather(*(reserve(i) for i in range(n)), *(rename(t) for t in titles))
        found = (await client.get(f"/api/projects/{project}")).json()
        assert found["message_count"] == 2 * n
        assert found["title"] in titles
        page = (await client.get(f"/api/projects/{project}/messages?limit=200")).json()
        assert sorted(m["sequence"] for m in page["messages"]) == list(range(1, 2 * n + 1))
