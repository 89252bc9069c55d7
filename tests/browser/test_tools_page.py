"""A tool call on the page: the demo generator answers a message starting with /tool with a call
of its demo tool (browser_time); the page shows the call as a card (name, arguments), runs the
tool itself, sends the result as the next turn, and shows it on the card, live and after a
reload."""

from __future__ import annotations

import json

from playwright.async_api import expect

from server.generators.demo import DEMO_TOOL, DEMO_TOOL_ARGUMENTS
from tests.browser.helpers import Browser, answer, history, open_project, send, sign_in
from tests.support import create_project, create_user, running_server, settings_for


async def test_the_page_answers_the_demo_tool_and_shows_the_call(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=6, demo_delta_ms=40)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Tools")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)

        await send(page, "/tool what time is it?")
        calling = answer(page, 2)
        await expect(calling).to_have_attribute("data-status", "success", timeout=10_000)
        card = calling.locator(".tool-card")
        await expect(card).to_have_count(1)
        await expect(card.locator(".tool-name")).to_have_text(DEMO_TOOL)
        await expect(card.locator(".tool-arguments")).to_have_text(DEMO_TOOL_ARGUMENTS)
        # The page ran the tool and sent its result: the next answer quotes it.
        final = answer(page, 4)
        await expect(final).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(card.locator(".tool-result")).to_contain_text("timezone")
        await expect(page.locator('li.message[data-role="tool"]')).to_be_hidden()
        stored = await history(client, project)
        assert [(m["sequence"], m["role"]) for m in stored] == [
            (1, "user"),
            (2, "assistant"),
            (3, "tool"),
            (4, "assistant"),
        ]
        [call] = stored[1]["tool_calls"]
        [result] = stored[2]["tool_results"]
        assert result["tool_call_id"] == call["id"]
        assert set(json.loads(result["content"])) == {"time", "timezone"}
        assert result["content"] in stored[3]["content"]

        await page.reload()
        await open_project(page, project)
        card = answer(page, 2).locator(".tool-card")
        await expect(card.locator(".tool-name")).to_have_text(DEMO_TOOL)
        await expect(card.locator(".tool-result")).to_have_text(result["content"])
        # Nothing answered twice: a reload runs no tool.
        await expect(page.locator("li.message")).to_have_count(4)
        assert len(await history(client, project)) == 4
