"""An answer cut short (finish_reason `length`) says so under it, live and after a reload; an
answer that ended by itself does not. The demo generator cuts short a message whose first word is
/cut."""

from __future__ import annotations

from playwright.async_api import expect

from tests.browser.helpers import Browser, answer, history, open_project, send, sign_in
from tests.support import create_project, create_user, running_server, settings_for

NOTICE = "Cut short: the answer reached its length limit."


async def test_an_answer_cut_short_says_so(database_url: str, browser: Browser) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=10, demo_delta_ms=60)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Short answers")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)

        await send(page, "How are you today?")
        whole = answer(page, 2)
        await expect(whole).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(whole.locator(".cut-short")).to_be_hidden()

        await send(page, "/cut Tell me a long story")
        cut = answer(page, 4)
        await expect(cut).to_have_attribute("data-status", "streaming", timeout=10_000)
        await expect(cut.locator(".cut-short")).to_be_hidden()  # not known until it ends
        await expect(cut).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(cut.locator(".cut-short")).to_be_visible()
        await expect(cut.locator(".cut-short")).to_have_text(NOTICE)
        await expect(page.locator("#announcer")).to_have_text("Answer #4 finished, cut short")

        await page.reload()
        await open_project(page, project)
        await expect(answer(page, 4).locator(".cut-short")).to_be_visible()
        await expect(answer(page, 2).locator(".cut-short")).to_be_hidden()
        await expect(page.locator("li.message .cut-short:visible")).to_have_count(1)
        stored = await history(client, project)
    assert [m["finish_reason"] for m in stored] == [None, "stop", None, "length"]
