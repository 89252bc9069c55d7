"""The demo page asks for ``on_running`` ``enqueue``: a message sent while an answer of the
project is still being written (here from a second tab) waits for it, shown as queued."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

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
    first_end, second_start = await ended_and_started(database_url, stored[1], second)
    assert second_start > first_end, "the second answer started before the first one ended"


async def test_messages_typed_while_answers_stream_queue_in_order(
    database_url: str, browser: Browser
) -> None:
    """One tab: the next message goes while an answer streams and waits for it; the tab follows
    at most MAX_OPEN_ANSWERS (3) answers at once, then Send waits for one to end."""
    token = await create_user(database_url, "bob")
    settings = settings_for(database_url, demo_deltas=20, demo_delta_ms=100)
    prompts = ["The first question", "The second question", "The third question"]
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Typed ahead")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)

        await send(page, prompts[0])
        await expect(answer(page, 2)).to_have_attribute("data-status", "streaming")
        await expect(page.locator("#send")).to_be_enabled()

        await send(page, prompts[1])
        await expect(answer(page, 4).locator(".progress-stage")).to_have_text("queued")
        await expect(answer(page, 4)).to_have_attribute("data-status", "pending")
        await expect(page.locator("#send")).to_be_enabled()

        await send(page, prompts[2])
        third = answer(page, 6)
        await expect(third.locator(".progress-message")).to_have_text(
            "Queued behind 2 earlier answers"
        )
        # Three answers open: the fourth message waits until one of them ends.
        await expect(page.locator("#send")).to_be_disabled()
        await expect(page.locator("#message-input")).to_have_attribute("readonly", "")
        assert [m["status"] for m in await history(client, project)][1::2] == [
            "streaming",
            "pending",
            "pending",
        ]
        await expect(answer(page, 2)).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(page.locator("#send")).to_be_enabled()

        await expect(third).to_have_attribute("data-status", "success", timeout=15_000)

        async def settled() -> bool:
            return await shown_messages(page) == as_shown(await history(client, project))

        await wait_for(settled, timeout=10, what="the page to show the stored conversation")
        stored = await history(client, project)

    assert [m["content"] for m in stored[0::2]] == prompts
    assert [m["content"] for m in stored[1::2]] == [demo_answer(p) for p in prompts]
    assert [m["status"] for m in stored[1::2]] == ["success"] * 3
    for before, after in ((stored[1], stored[3]), (stored[3], stored[5])):
        ended, started = await ended_and_started(database_url, before, after)
        assert started > ended, "an answer started before the one ahead of it ended"


async def ended_and_started(
    database_url: str, before: dict[str, Any], after: dict[str, Any]
) -> tuple[datetime, datetime]:
    """When answer ``before`` ended, and when answer ``after`` wrote its first delta (the
    database's clock)."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT updated_at FROM messages WHERE id = $1), (SELECT min(created_at)"
            " FROM event_chunks WHERE message_id = $2 AND kinds LIKE '%d%')",
            uuid.UUID(before["id"]),
            uuid.UUID(after["id"]),
        )
    finally:
        await conn.close()
    assert row is not None
    return row[0], row[1]
