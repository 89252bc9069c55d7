"""A worker that is shutting down sends the page's EventSource back to reconnect, instead of a 503
that EventSource takes as final (issue Reliability II, item 9)."""

from __future__ import annotations

from playwright.async_api import Page, expect

from server.generators.demo import demo_answer
from tests.browser.helpers import (
    Browser,
    answer,
    history,
    open_project,
    recorded,
    send,
    sign_in,
    wait_for,
)
from tests.support import create_project, create_user, running_server, settings_for


async def _reconnecting(page: Page) -> bool:
    return "reconnecting" in (await recorded(page))["connection"]


async def test_a_draining_worker_sends_eventsource_back_to_reconnect(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, retry_ms=500)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Deploy day")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)

        # What a drain sets first (server/worker.py): this worker starts no new generation. The
        # rest of a drain (ending streams, stopping) is left out so that the same process can
        # play the worker that the reconnect reaches next, behind a load balancer.
        runner = srv.services.runner
        runner.draining = True
        await send(page, "Are you still there?")
        await wait_for(lambda: _reconnecting(page), what="EventSource to reconnect")
        assert await history(client, project) == []  # the draining worker started nothing
        runner.draining = False

        reply = answer(page, 2)
        await expect(reply).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(page.locator("#banner")).to_be_hidden()
        stored = await history(client, project)
    assert [(m["sequence"], m["role"]) for m in stored] == [(1, "user"), (2, "assistant")]
    assert stored[1]["content"] == demo_answer("Are you still there?")
