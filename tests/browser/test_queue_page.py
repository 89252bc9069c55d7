"""The demo page asks for ``on_running`` ``enqueue``: a message sent while an answer of the
project is still being written (here from a second tab) waits for it, shown as queued."""

from __future__ import annotations

import uuid

import asyncpg
from playwright.async_api import expect

from server.generators.demo import demo_answer
from tests.browser.helpers import (
    Browser,
    answer,
    assert_prefixes,
    history,
    open_project,
    recorded,
    send,
    shown_messages,
    sign_in,
    wait_for,
)
from tests.browser.test_page import as_shown
from tests.support import create_project, create_user, running_server, settings_for


async def test_a_message_sent_while_an_answer_streams_waits_for_it(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=20, demo_delta_ms=100)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "One after the other")
        first_tab, second_tab = await browser.new_page(), await browser.new_page()
        for tab in (first_tab, second_tab):
            await sign_in(tab, srv.base_url, token)
            await open_project(tab, project)
        await send(first_tab, "The first question")
        await expect(answer(first_tab, 2)).to_have_attribute("data-status", "streaming")

        await send(second_tab, "The second question")
        queued = answer(second_tab, 4)
        await expect(queued.locator(".progress-stage")).to_have_text("queued")
        await expect(queued.locator(".progress-message")).to_have_text(
            "Queued behind 1 earlier answer"
        )
        await expect(queued).to_have_attribute("data-status", "pending")
        assert [m["status"] for m in await history(client, project)][1::2] == [
            "streaming",
            "pending",
        ]

        for tab in (first_tab, second_tab):
            await expect(answer(tab, 4)).to_have_attribute("data-status", "success", timeout=15_000)

        async def settled() -> bool:
            stored = await history(client, project)
            return all(
                [await shown_messages(tab) == as_shown(stored) for tab in (first_tab, second_tab)]
            )

        await wait_for(settled, timeout=10, what="both tabs to show the stored conversation")
        stored = await history(client, project)
        states = (await recorded(second_tab))["answers"]

    assert [m["content"] for m in stored[1::2]] == [
        demo_answer("The first question"),
        demo_answer("The second question"),
    ]
    second = stored[3]
    mine = [s for s in states if s["id"] == second["id"]]
    queued_states = [s for s in mine if s["stage"] == "queued"]
    assert queued_states and all(
        s["status"] == "pending" and s["content"] == "" for s in queued_states
    ), "a queued answer is shown pending, without text"
    assert_prefixes(states, second["id"], second["content"])
    conn = await asyncpg.connect(database_url)
    try:
        first_end, second_start = await conn.fetchrow(
            "SELECT (SELECT updated_at FROM messages WHERE id = $1), "
            "(SELECT min(created_at) FROM event_chunks WHERE message_id = $2 AND kinds LIKE '%d%')",
            uuid.UUID(stored[1]["id"]),
            uuid.UUID(second["id"]),
        )
    finally:
        await conn.close()
    assert second_start > first_end, "the second answer started before the first one ended"
