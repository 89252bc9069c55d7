"""A user holds as many streams as a worker allows (``MAX_STREAMS_PER_USER``: other tabs, other
devices) and opens the page on a running answer: its stream is refused with 429.

Regression: EventSource treats an HTTP error as final and says nothing of which; the page retried
in silence, with a growing pause, whatever Retry-After said. It must say why the answer waits
and attach again after Retry-After, then take the banner down."""

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
from tests.browser.test_page import as_shown
from tests.support import GatedGenerator, create_project, create_user, running_server, settings_for


async def test_an_answer_stream_refused_for_too_many_streams_says_so_and_resumes(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()
    settings = settings_for(database_url, max_streams_per_user=1)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Too many tabs")
        started = await client.post(
            f"/api/projects/{project}/generations",
            json={"message": "A long one"},
            headers={"Accept": "application/json"},
        )
        assert started.status_code == 202
        events_url = started.json()["events_url"]
        page = await browser.new_page()
        banner = page.locator("#banner")
        try:
            # Another tab of alice's holds her only stream.
            async with client.stream("GET", events_url) as other_tab:
                assert other_tab.status_code == 200
                await sign_in(page, srv.base_url, token)
                await open_project(page, project)
                await expect(banner).to_be_visible(timeout=10_000)
                await expect(banner).to_have_attribute("data-code", "too_many_streams_per_user")
                await expect(banner.locator(".banner-text")).to_contain_text(
                    "This answer resumes by itself in 5 s."
                )
                assert srv.services.worker.streams.open == 1
            # The other tab closed: after Retry-After the page attaches again by itself (the
            # answer is still running: only a stream that opened takes the banner down).
            await expect(banner).to_be_hidden(timeout=20_000)
            assert srv.services.worker.streams.open == 1
        finally:
            generator.gate.set()
        reply = answer(page, 2)
        await expect(reply).to_have_attribute("data-status", "success", timeout=15_000)
        shown = await shown_messages(page)
        stored = await history(client, project)
    assert stored[1]["content"] == "first second"
    assert shown == as_shown(stored)


async def test_a_message_refused_for_too_many_streams_is_sent_by_itself_once_there_is_room(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()
    settings = settings_for(database_url, max_streams_per_user=1)
    async with (
        running_server(settings, generator=generator) as srv,
        srv.client(token) as client,
    ):
        elsewhere = await create_project(client, "Elsewhere")
        background = await client.post(
            f"/api/projects/{elsewhere}/generations",
            json={"message": "Running in another tab"},
            headers={"Accept": "application/json"},
        )
        events_url = background.json()["events_url"]
        project = await create_project(client, "Here")
        page = await browser.new_page()
        banner = page.locator("#banner")
        try:
            await sign_in(page, srv.base_url, token)
            await open_project(page, project)
            # Another tab holds alice's only stream, on an answer of another project.
            async with client.stream("GET", events_url) as other_tab:
                assert other_tab.status_code == 200
                await send(page, "Send me when you can")
                await expect(banner).to_have_attribute("data-code", "too_many_streams_per_user")
                await expect(banner.locator(".banner-text")).to_contain_text(
                    "Your message is sent by itself in 5 s."
                )
                assert await history(client, project) == [], "nothing was reserved"
            await expect(answer(page, 2)).to_be_visible(timeout=20_000)
            await expect(banner).to_be_hidden()
        finally:
            generator.gate.set()
        await expect(answer(page, 2)).to_have_attribute("data-status", "success", timeout=15_000)
        stored = await history(client, project)
        shown = await shown_messages(page)
    assert [m["content"] for m in stored] == ["Send me when you can", "first second"]
    assert shown == as_shown(stored)
