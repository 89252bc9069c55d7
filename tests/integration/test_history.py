"""History paging (API.md "History"): the latest page by default, `before` and `after` pages,
`limit`, and `has_more` in the direction paged, exact at the boundaries."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import create_project, create_user, generate, running_server, settings_for

GENERATIONS = 27  # 54 messages: more than the default page of 50
LAST = 2 * GENERATIONS


@pytest.fixture
async def history(database_url: str):  # type: ignore[no-untyped-def]
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=1)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client)
        for n in range(GENERATIONS):
            await generate(client, project, f"message {n}")
        yield client, project


async def _page(client: httpx.AsyncClient, project: str, query: str = "") -> tuple[list[int], bool]:
    response = await client.get(f"/api/projects/{project}/messages?{query}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"messages", "has_more"}
    messages = body["messages"]
    for m in messages:
        assert m["role"] == ("user" if m["sequence"] % 2 else "assistant")
    return [m["sequence"] for m in messages], body["has_more"]


def seqs(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


# (query, the sequences of the page, has_more)
PAGES: list[tuple[str, list[int], bool]] = [
    # Without before/after: the latest `limit` (default 50), still ascending.
    ("", seqs(LAST - 49, LAST), True),
    ("limit=10", seqs(45, 54), True),
    ("limit=53", seqs(2, 54), True),
    ("limit=54", seqs(1, 54), False),
    ("limit=200", seqs(1, 54), False),
    # before=S: the `limit` just below S.
    ("before=45&limit=10", seqs(35, 44), True),
    ("before=5&limit=3", seqs(2, 4), True),
    ("before=5&limit=4", seqs(1, 4), False),
    ("before=5&limit=10", seqs(1, 4), False),
    ("before=2", [1], False),
    ("before=1", [], False),
    ("before=1000&limit=10", seqs(45, 54), True),
    ("before=52", seqs(2, 51), True),
    ("before=51", seqs(1, 50), False),
    # after=S: the `limit` just above S.
    ("after=0&limit=10", seqs(1, 10), True),
    ("after=43&limit=10", seqs(44, 53), True),
    ("after=44&limit=10", seqs(45, 54), False),
    ("after=50", seqs(51, 54), False),
    ("after=53", [54], False),
    ("after=54", [], False),
    ("after=0", seqs(1, 50), True),
]


async def test_history_pages(history) -> None:  # type: ignore[no-untyped-def]
    client, project = history
    for query, expected, has_more in PAGES:
        assert await _page(client, project, query) == (expected, has_more), query


async def test_paging_back_and_forth_visits_every_message_once(history) -> None:  # type: ignore[no-untyped-def]
    client, project = history
    backwards: list[int] = []
    page, more = await _page(client, project, "limit=7")
    backwards = page + backwards
    while more:
        page, more = await _page(client, project, f"limit=7&before={page[0]}")
        backwards = page + backwards
    forwards: list[int] = []
    more, cursor = True, 0
    while more:
        page, more = await _page(client, project, f"limit=7&after={cursor}")
        forwards += page
        cursor = page[-1] if page else cursor
    assert backwards == forwards == seqs(1, LAST)


async def test_empty_project_history(database_url: str) -> None:
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client)
        for query in ("", "limit=1", "before=5", "after=0"):
            assert await _page(client, project, query) == ([], False)
