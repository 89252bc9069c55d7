"""The demo page in daily use: switching projects, stopping answers, following what was sent, and
noticing a server that went away while the page sat idle."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
from playwright.async_api import Page, expect

from server.generators.demo import demo_answer
from tests.browser.helpers import (
    Browser,
    answer,
    content_length,
    history,
    open_project,
    send,
    sign_in,
    wait_for,
)
from tests.processes import Spawn
from tests.support import GatedGenerator, create_project, create_user, running_server, settings_for

PAGE_SIZE = 50  # the page's history page (static/conversation.js)


async def post_exchanges(client: httpx.AsyncClient, project: str, count: int) -> None:
    """`count` exchanges written through the API, one after the other, all answered."""
    for number in range(count):
        response = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": f"Question number {number + 1}"},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 202, response.text

    async def answered() -> bool:
        stored = await history(client, project)
        return len(stored) == 2 * count and all(m["status"] == "success" for m in stored)

    await wait_for(answered, timeout=30, what=f"{count} answers")


async def scroller_metrics(page: Page) -> dict[str, float]:
    found: dict[str, float] = await page.locator("#scroller").evaluate(
        """s => ({ top: s.scrollTop, height: s.scrollHeight, client: s.clientHeight,
                   below: s.scrollHeight - s.scrollTop - s.clientHeight })"""
    )
    return found


async def test_switching_from_a_long_project_asks_for_no_page_before_nan(
    database_url: str, browser: Browser
) -> None:
    """Bug: after a project with more than a page of history, opening another one asked for
    `before=NaN` (the stale `has_more` and the scroll to the top of the emptied list) and showed
    "before must be an integer"."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        short = await create_project(client, "Short one")
        await post_exchanges(client, short, 1)
        long = await create_project(client, "Long one")  # the newest: the page opens it first
        await post_exchanges(client, long, PAGE_SIZE // 2 + 1)

        page = await browser.new_page()
        asked: list[str] = []
        page.on("request", lambda request: asked.append(request.url))
        await sign_in(page, srv.base_url, token)
        await open_project(page, long)
        await expect(answer(page, PAGE_SIZE + 2)).to_be_visible()
        await expect(page.locator("#load-older")).to_be_visible()

        for _ in range(2):  # there and back and there again
            await page.locator(f'#projects button[data-project-id="{short}"]').click()
            await open_project(page, short)
            await expect(answer(page, 2)).to_have_attribute("data-status", "success")
            await page.locator(f'#projects button[data-project-id="{long}"]').click()
            await open_project(page, long)
            await expect(answer(page, PAGE_SIZE + 2)).to_be_visible()
        await page.locator(f'#projects button[data-project-id="{short}"]').click()
        await open_project(page, short)
        # A round trip after the switch: anything the switch asked for has been answered by now.
        await send(page, "Still here?")
        await expect(answer(page, 4)).to_have_attribute("data-status", "success")

        await expect(page.locator("#banner")).to_be_hidden()
        await expect(page.locator("#load-older")).to_be_hidden()
        shown = await page.locator("li.message").count()

    paging = [url for url in asked if "before=" in url]
    assert not [url for url in paging if "before=NaN" in url], paging
    assert shown == 4, "the short project shows its own four messages, nothing else"


async def test_composer_cancel_stops_the_streaming_answer_not_a_queued_one(
    database_url: str, browser: Browser
) -> None:
    """Bug: with #2 streaming and #4, #6 queued behind it, Cancel cancelled #6 and #2 went on.
    The composer's Cancel stops the answer being written; each answer has its own Stop."""
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()  # every answer writes "first ", then waits for the gate
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Too many questions")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        for number, prompt in enumerate(["One?", "Two?", "Three?"]):
            await send(page, prompt)
            await expect(answer(page, 2 * number + 2)).to_be_visible()
        await expect(answer(page, 2)).to_have_attribute("data-status", "streaming")
        for queued in (4, 6):
            await expect(answer(page, queued).locator(".progress-stage")).to_have_text("queued")

        await page.locator("#cancel").click()
        await expect(answer(page, 2)).to_have_attribute("data-status", "cancelled")
        # The next in line starts: it was not cancelled, and neither was the last one.
        await expect(answer(page, 4)).to_have_attribute("data-status", "streaming")
        await expect(answer(page, 6)).to_have_attribute("data-status", "pending")
        await expect(answer(page, 2).locator(".stop")).to_be_hidden()
        for running in (4, 6):
            await expect(answer(page, running).locator(".stop")).to_be_visible()

        await answer(page, 6).locator(".stop").click()
        await expect(answer(page, 6)).to_have_attribute("data-status", "cancelled")
        await expect(answer(page, 6).locator(".stop")).to_be_hidden()
        await expect(answer(page, 4)).to_have_attribute("data-status", "streaming")
        await expect(answer(page, 4).locator(".stop")).to_be_visible()

        generator.gate.set()
        await expect(answer(page, 4)).to_have_attribute("data-status", "success")
        await expect(answer(page, 4).locator(".stop")).to_be_hidden()
        await expect(page.locator("#cancel")).to_be_hidden()
        await expect(page.locator("#banner")).to_be_hidden()
        stored = await history(client, project)

    assert [m["status"] for m in stored[1::2]] == ["cancelled", "success", "cancelled"]
    assert [m["content"] for m in stored[1::2]] == ["first ", "first second", ""]


async def test_sending_while_scrolled_up_follows_the_message_and_its_answer(
    database_url: str, browser: Browser
) -> None:
    """Bug: scrolled up in the history, a sent message and its answer stayed off screen. The page
    follows the new message and its answer as it streams, until the person scrolls away."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=30, demo_delta_ms=100)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Scrolling")
        await post_exchanges(client, project, 10)
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        await expect(answer(page, 20)).to_be_in_viewport()
        await page.locator("#scroller").evaluate("s => { s.scrollTop = 0; }")
        await expect(answer(page, 20)).not_to_be_in_viewport()

        prompt = "Where did my message go?"
        await send(page, prompt)
        await expect(page.locator('li.message[data-sequence="21"]')).to_be_in_viewport()
        reply = answer(page, 22)
        await expect(reply).to_have_attribute("data-status", "success", timeout=15_000)
        # It went on following as the answer grew: its end is in view, and nothing below it.
        await expect(reply.locator(".content li").last).to_be_in_viewport()
        assert (await scroller_metrics(page))["below"] < 2

        # Scrolling away while an answer streams: the page leaves the reader where they went.
        await send(page, "And another one")
        second = answer(page, 24)
        await wait_for(lambda: _has_text(page, 24), what="the second answer to be under way")
        await page.locator("#scroller").hover()
        await page.mouse.wheel(0, -400)
        await wait_for(lambda: _scrolled_up(page), what="the wheel to scroll up")
        reading = await _settled_top(page)
        await expect(second).to_have_attribute("data-status", "success", timeout=15_000)
        after = await scroller_metrics(page)
        stored = await history(client, project)

    assert after["top"] == reading, "the page scrolled while the person was reading above"
    assert after["below"] > 100
    assert stored[21]["content"] == demo_answer(prompt)


async def test_live_turns_offline_when_the_server_dies_while_the_page_is_idle(
    database_url: str, browser: Browser, spawn: Spawn
) -> None:
    """Bug: with no answer streaming, "live" stayed green after the server had gone, until the
    next send. The page notices within a few seconds, and notices its return too."""
    token = await create_user(database_url, "alice")
    proc = spawn("page-server", database_url)
    proc.start()
    await proc.wait_ready()
    async with proc.client(token) as client:
        project = await create_project(client, "Quiet")
        await post_exchanges(client, project, 1)
    page = await browser.new_page()
    await sign_in(page, proc.base_url, token)
    await open_project(page, project)
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute("data-state", "live")

    proc.kill()
    await expect(indicator).to_have_attribute("data-state", "offline", timeout=20_000)
    await expect(indicator).to_have_text("offline")

    proc.start()  # the same port
    await proc.wait_ready()
    await expect(indicator).to_have_attribute("data-state", "live", timeout=20_000)


async def test_live_turns_offline_when_the_server_hangs_under_an_open_stream(
    database_url: str, browser: Browser, spawn: Spawn
) -> None:
    """A server that stops answering but keeps its connections (stopped, here, with SIGSTOP)
    sends no error to the page's open stream: the page must still notice it is gone."""
    token = await create_user(database_url, "alice")
    proc = spawn("page-server", database_url, demo_deltas=40, demo_delta_ms=100)
    proc.start()
    await proc.wait_ready()
    async with proc.client(token) as client:
        project = await create_project(client, "Frozen")
    page = await browser.new_page()
    await sign_in(page, proc.base_url, token)
    await open_project(page, project)
    indicator = page.locator("#connection")
    await send(page, "Keep talking")
    await wait_for(lambda: _has_text(page, 2), what="the answer to be under way")
    await expect(indicator).to_have_attribute("data-state", "live")

    proc.send(signal.SIGSTOP)
    try:
        await expect(indicator).to_have_attribute("data-state", "offline", timeout=20_000)
    finally:
        proc.send(signal.SIGCONT)
    await expect(indicator).to_have_attribute("data-state", "live", timeout=20_000)
    await expect(answer(page, 2)).to_have_attribute("data-status", "success", timeout=30_000)
    async with proc.client(token) as client:
        stored = await history(client, project)
    assert stored[1]["content"] == demo_answer("Keep talking")


async def _has_text(page: Any, sequence: int) -> bool:
    return await content_length(page, sequence) > 0


async def _scrolled_up(page: Page) -> bool:
    return (await scroller_metrics(page))["below"] > 100


async def _settled_top(page: Page) -> float:
    """The scroll position once a (smooth) wheel scroll has come to rest."""
    previous = None
    for _ in range(50):
        top = (await scroller_metrics(page))["top"]
        if top == previous:
            return top
        previous = top
        await asyncio.sleep(0.1)
    raise AssertionError("the scroller kept moving")
