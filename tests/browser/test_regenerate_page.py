"""Regenerate on the page: the latest answer, once ended, offers Regenerate; a new variant
streams in its place and says "2 / 2"; the arrows switch between the answers and make the one
shown current (history and a reload agree); an earlier answer offers neither."""

from __future__ import annotations

from playwright.async_api import expect

from tests.browser.helpers import (
    Browser,
    answer,
    history,
    open_project,
    send,
    shown_messages,
    sign_in,
)
from tests.support import create_project, create_user, running_server, settings_for


async def test_regenerate_and_switch_between_the_answers(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=12, demo_delta_ms=40)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Variants")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)

        await send(page, "first question")
        await expect(answer(page, 2)).to_have_attribute("data-status", "success", timeout=10_000)
        await send(page, "second question")
        latest = answer(page, 4)
        await expect(latest).to_have_attribute("data-status", "success", timeout=10_000)
        first_id = await latest.get_attribute("data-id")
        # Only the latest answer, once ended, can be regenerated; no arrows with one answer.
        await expect(answer(page, 2).locator(".regenerate")).to_be_hidden()
        await expect(latest.locator(".variants")).to_be_hidden()

        await latest.locator(".regenerate").click()
        # The new variant takes the old one's place (one answer per sequence), streaming.
        await expect(answer(page, 4)).to_have_count(1)
        await expect(answer(page, 4)).not_to_have_attribute("data-id", first_id or "")
        await expect(answer(page, 4)).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(answer(page, 4).locator(".variant-label")).to_have_text("2 / 2")
        await expect(answer(page, 4).locator(".next-variant")).to_be_disabled()
        second_id = await answer(page, 4).get_attribute("data-id")
        shown = await shown_messages(page)
        assert [m["sequence"] for m in shown] == [1, 2, 3, 4]

        stored = await history(client, project)
        assert [(m["sequence"], m["variant"], m["variants"]) for m in stored[2:]] == [
            (3, 1, 1),
            (4, 2, 2),
        ]
        assert stored[3]["id"] == second_id

        # Back to the first answer: shown, and current for history and later turns.
        await answer(page, 4).locator(".prev-variant").click()
        await expect(answer(page, 4)).to_have_attribute("data-id", first_id or "")
        await expect(answer(page, 4).locator(".variant-label")).to_have_text("1 / 2")
        await expect(answer(page, 4).locator(".prev-variant")).to_be_disabled()
        stored = await history(client, project)
        assert stored[3]["id"] == first_id

        await page.reload()
        await open_project(page, project)
        await expect(answer(page, 4)).to_have_attribute("data-id", first_id or "")
        await expect(answer(page, 4).locator(".variant-label")).to_have_text("1 / 2")

        # A new turn: the earlier answer's arrows and Regenerate are gone for good.
        await send(page, "third question")
        await expect(answer(page, 6)).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(answer(page, 4).locator(".regenerate")).to_be_hidden()
        await expect(answer(page, 4).locator(".next-variant")).to_be_disabled()
        await expect(answer(page, 6).locator(".regenerate")).to_be_visible()
        stored = await history(client, project)
    assert [m["sequence"] for m in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[3]["id"] == first_id
