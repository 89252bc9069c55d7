"""The demo page in a real Chromium, against the real server and its PostgreSQL.

Each test checks what the page showed against what the API says is stored, and the recorder in
helpers.py lets it check every text an answer went through on the way, not only the last one.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from server.generators.demo import demo_answer
from tests.browser.helpers import (
    Browser,
    CuttableProxy,
    answer,
    assert_prefixes,
    content_length,
    get_message,
    history,
    open_project,
    recorded,
    send,
    shown_content,
    shown_messages,
    sign_in,
    wait_for,
)
from tests.support import create_project, create_user, running_server, settings_for

# 30 pieces 100 ms apart: about 3 s of streaming, time enough to reload, go offline or cancel.
SLOW = {"demo_deltas": 30, "demo_delta_ms": 100}
SHOWN_FIELDS = ("id", "sequence", "role", "status", "content")


def as_shown(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the page should show of stored messages: answers rendered from Markdown."""
    return [
        {**{name: message[name] for name in SHOWN_FIELDS}, "content": shown_content(message)}
        for message in messages
    ]


async def test_send_shows_progress_then_the_streamed_answer(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=10, demo_delta_ms=100)
    async with running_server(settings) as srv, srv.client(token) as client:
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await expect(page.locator("#no-projects")).to_be_visible()

        await page.locator("#new-project-title").fill("First steps")
        await page.locator("#new-project-title").press("Enter")
        await page.wait_for_url(re.compile(r"\?project=[0-9a-f-]{36}$"))
        project = page.url.rsplit("=", 1)[1]
        stored_project = (await client.get(f"/api/projects/{project}")).json()
        assert stored_project["title"] == "First steps"
        await expect(page.locator("#project-title")).to_have_text("First steps")

        prompt = "What comes first?"
        await send(page, prompt)
        reply = answer(page, 2)
        await expect(reply.locator(".progress-row")).to_be_visible()
        await expect(page.locator("#cancel")).to_be_visible()
        # The next message could go now: it would queue behind this answer (test_queue_page).
        await expect(page.locator("#send")).to_be_enabled()
        await wait_for(lambda: _has_text(page, 2), what="the first piece of the answer")
        await expect(reply).to_have_attribute("data-status", "streaming")
        await browser.screenshot(page, "mid-answer")

        await expect(reply).to_have_attribute("data-status", "success", timeout=10_000)
        await browser.screenshot(page, "finished")
        await expect(reply.locator(".status")).to_have_text("success")
        await expect(reply.locator(".progress-row")).to_be_hidden()
        await expect(page.locator("#cancel")).to_be_hidden()
        await expect(page.locator("#send")).to_be_enabled()
        await expect(page.locator("#message-input")).to_have_value("")

        shown = await shown_messages(page)
        stored = await history(client, project)
        states = (await recorded(page))["answers"]

    assert shown == as_shown(stored)
    assert [m["sequence"] for m in stored] == [1, 2]
    assert stored[0]["content"] == prompt and stored[0]["role"] == "user"
    assert stored[1]["status"] == "success"
    assert stored[1]["content"] == demo_answer(prompt)

    # Progress first: the generator's stages were shown before any text arrived.
    first_text = next(i for i, s in enumerate(states) if s["content"])
    stages = [s["stage"] for s in states[:first_text] if s["progressShown"]]
    assert "thinking" in stages or "writing" in stages, states[:first_text]
    # Then the text grew piece by piece, each step a prefix of the stored content.
    texts = assert_prefixes(states, stored[1]["id"], stored[1]["content"])
    assert len([t for t in texts if t]) >= 3, f"the answer was not streamed: {texts}"


async def test_first_message_with_no_project_starts_one_titled_from_it(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "newcomer")
    settings = settings_for(database_url, demo_deltas=10, demo_delta_ms=50)
    async with running_server(settings) as srv, srv.client(token) as client:
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await expect(page.locator("#no-projects")).to_be_visible()
        await expect(page.locator("#message-input")).to_be_enabled()
        # Not an empty pane: a welcome that says what to try.
        welcome = page.locator("#empty")
        await expect(welcome).to_be_visible()
        for hint in ("/think", "/tool", "/cut", "Markdown"):
            await expect(welcome).to_contain_text(hint)

        prompt = "Plan a picnic\nfor six people, with games"
        await send(page, prompt)
        await page.wait_for_url(re.compile(r"\?project=[0-9a-f-]{36}$"))
        project = page.url.rsplit("=", 1)[1]
        reply = answer(page, 2)
        await expect(welcome).to_be_hidden()
        await expect(reply).to_have_attribute("data-status", "success", timeout=10_000)
        shown = await shown_messages(page)
        stored = await history(client, project)
        projects = (await client.get("/api/projects")).json()["projects"]
        title = "Plan a picnic for six people, with games"
        await expect(page.locator("#project-title")).to_have_text(title)
        await expect(page.locator("#projects .project-title")).to_have_text([title])
        await expect(page.locator("#message-input")).to_have_value("")
        states = (await recorded(page))["answers"]

    assert [p["title"] for p in projects] == [title]
    assert [m["content"] for m in stored] == [prompt, demo_answer(prompt)]
    assert shown == as_shown(stored)
    texts = assert_prefixes(states, stored[1]["id"], stored[1]["content"])
    assert len([t for t in texts if t]) >= 3, f"the answer was not streamed: {texts}"


async def test_a_long_first_message_is_cut_at_a_word_for_the_title(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "newcomer")
    words = [f"word{n}" for n in range(60)]  # 6 or 7 characters each, 400 in all
    prompt = " ".join(words)
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await send(page, prompt)
        await expect(answer(page, 2)).to_have_attribute("data-status", "success")
        (project,) = (await client.get("/api/projects")).json()["projects"]
        stored = await history(client, project["id"])

    title = project["title"]
    assert title.endswith("…") and len(title) <= 80
    kept = title.removesuffix("…").split(" ")
    assert kept == words[: len(kept)], "whole words only, from the start"
    assert len(" ".join(words[: len(kept) + 1])) > 79, "as many words as fit"
    assert stored[0]["content"] == prompt


async def test_reload_mid_answer_continues_without_duplicates(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    async with (
        running_server(settings_for(database_url, **SLOW)) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Reloading")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        prompt = "Survive a reload, please"
        await send(page, prompt)
        await wait_for(lambda: _has_text(page, 2), what="the first piece of the answer")
        before_reload = (await recorded(page))["answers"]
        message_id = before_reload[-1]["id"]
        running = await get_message(client, project, message_id)
        assert running["status"] in ("pending", "streaming"), "the reload must be mid-answer"

        await page.reload()
        await wait_for(lambda: _has_text(page, 2), what="the answer after the reload")
        await browser.screenshot(page, "after-reload")
        reply = answer(page, 2)
        await expect(reply).to_have_attribute("data-status", "success", timeout=15_000)
        shown = await shown_messages(page)
        stored = await history(client, project)
        after_reload = (await recorded(page))["answers"]

    assert shown == as_shown(stored), "shown text == stored content, nothing doubled or lost"
    assert len(stored) == 2, "reloading must not send the message again"
    final = stored[1]["content"]
    assert final == demo_answer(prompt)
    assert_prefixes(before_reload, message_id, final)
    texts = assert_prefixes(after_reload, message_id, final)
    streamed = [s for s in after_reload if s["status"] == "streaming" and s["content"]]
    assert len({s["content"] for s in streamed}) >= 2, (
        f"after the reload the answer should go on streaming: {texts}"
    )


async def test_offline_mid_answer_then_back_resumes_exactly(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    # retry_ms: how soon EventSource tries again; short, so that the test is quick.
    settings = settings_for(database_url, retry_ms=300, **SLOW)
    async with (
        running_server(settings) as srv,
        srv.client(token) as client,
        CuttableProxy(srv.base_url) as proxy,
    ):
        project = await create_project(client, "Tunnels")
        page = await browser.new_page()
        await sign_in(page, proxy.base_url, token)
        await open_project(page, project)
        prompt = "Going through a tunnel"
        await send(page, prompt)
        await wait_for(lambda: _has_text(page, 2), what="the first piece of the answer")
        indicator = page.locator("#connection")
        await expect(indicator).to_have_attribute("data-state", "live")

        await browser.context.set_offline(True)
        proxy.cut()  # offline emulation alone would leave the open stream flowing
        await expect(indicator).to_have_attribute("data-state", "offline")
        await expect(indicator).to_have_text("offline")
        cut_at = await content_length(page, 2)
        await asyncio.sleep(0.8)  # several EventSource retries fail meanwhile
        assert await content_length(page, 2) == cut_at, "nothing can arrive while offline"
        await browser.screenshot(page, "offline")
        message_id = (await recorded(page))["answers"][-1]["id"]
        running = await get_message(client, project, message_id)
        assert running["status"] in ("pending", "streaming"), "still running when we return"

        proxy.restore()
        await browser.context.set_offline(False)
        await expect(indicator).to_have_attribute("data-state", "live", timeout=10_000)
        reply = answer(page, 2)
        await expect(reply).to_have_attribute("data-status", "success", timeout=15_000)
        shown = await shown_messages(page)
        stored = await history(client, project)
        record = await recorded(page)

    assert shown == as_shown(stored), "shown text == stored content, nothing doubled or lost"
    final = stored[1]["content"]
    assert final == demo_answer(prompt)
    assert_prefixes(record["answers"], message_id, final)
    states = record["connection"]
    assert "offline" in states and states[-1] == "live", states
    assert len(stored) == 2, "resuming must not send the message again"


async def test_cancel_mid_answer_keeps_the_partial_text(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    async with (
        running_server(settings_for(database_url, **SLOW)) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Changed my mind")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        prompt = "Tell me everything"
        await send(page, prompt)
        await wait_for(lambda: _has_text(page, 2), what="the first piece of the answer")
        await page.locator("#cancel").click()
        reply = answer(page, 2)
        await expect(reply).to_have_attribute("data-status", "cancelled")
        await expect(reply.locator(".status")).to_have_text("cancelled")
        await expect(reply.locator(".progress-row")).to_be_hidden()
        await expect(page.locator("#cancel")).to_be_hidden()
        await expect(page.locator("#send")).to_be_enabled()
        await asyncio.sleep(0.5)  # a late piece must not change the shown text now
        shown = await shown_messages(page)
        stored = await history(client, project)
        states = (await recorded(page))["answers"]

    assert shown == as_shown(stored), "shown partial text == stored partial content"
    cancelled = stored[1]
    assert cancelled["status"] == "cancelled"
    full = demo_answer(prompt)
    assert cancelled["content"], "some text had arrived before the cancel"
    assert full.startswith(cancelled["content"]) and cancelled["content"] != full
    assert_prefixes(states, cancelled["id"], cancelled["content"])


async def test_two_tabs_sending_at_once_show_the_same_order(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=10, demo_delta_ms=100)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Shared")
        tabs = [await browser.new_page(), await browser.new_page()]
        for tab in tabs:
            await sign_in(tab, srv.base_url, token)
            await open_project(tab, project)
        await asyncio.gather(send(tabs[0], "from the first tab"), send(tabs[1], "from tab two"))

        async def settled() -> bool:
            stored = await history(client, project)
            if len(stored) != 4 or any(m["status"] != "success" for m in stored):
                return False
            shown = [await shown_messages(tab) for tab in tabs]
            return all(each == as_shown(stored) for each in shown)

        await wait_for(settled, timeout=15, what="both tabs to show the stored conversation")
        stored = await history(client, project)
        shown = [await shown_messages(tab) for tab in tabs]
        records = [(await recorded(tab))["answers"] for tab in tabs]

    assert [m["sequence"] for m in stored] == [1, 2, 3, 4]
    assert [m["role"] for m in stored] == ["user", "assistant"] * 2
    assert {stored[0]["content"], stored[2]["content"]} == {"from the first tab", "from tab two"}
    for exchange in (0, 2):
        assert stored[exchange + 1]["content"] == demo_answer(stored[exchange]["content"])
    assert shown[0] == shown[1] == as_shown(stored)
    for record in records:
        for message in stored[1::2]:
            assert_prefixes(record, message["id"], message["content"])


async def test_markup_in_a_message_is_shown_as_text_and_runs_nothing(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "mallory")
    title = "<b>bold</b> <img src=x onerror=alert(3)>"
    prompt = "Look: <img src=x onerror=alert(1)> and <script>alert(2)</script>"
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client, title)
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        await send(page, prompt)
        reply = answer(page, 2)
        await expect(reply).to_have_attribute("data-status", "success", timeout=10_000)
        live = await _markup_check(page, title)
        await page.reload()  # from history this time, not from the stream
        await expect(reply).to_have_attribute("data-status", "success", timeout=10_000)
        reloaded = await _markup_check(page, title)
        stored = await history(client, project)
        await asyncio.sleep(0.3)  # an onerror would have fired by now
        dialogs = list(browser.dialogs)
        # The control: the dialog listener does see a real alert.
        await page.evaluate("alert('control')")

    assert dialogs == [], f"the markup ran: {dialogs}"
    assert browser.dialogs == ["alert: control"]
    assert stored[0]["content"] == prompt
    assert stored[1]["content"] == demo_answer(prompt)
    for shown in (live, reloaded):
        assert shown["messages"] == as_shown(stored)
        assert shown["messages"][0]["content"] == prompt
        # The answer quotes the prompt; rendered as Markdown, its markup is still only text.
        assert "<script>alert(2)</script>" in shown["messages"][1]["content"]
        assert shown["elements"] == 0, "no element was made from the message's markup"
        assert shown["title"] == shown["sidebar"] == title


async def test_readme_screenshot(database_url: str, browser: Browser, repo_root: Path) -> None:
    """A conversation at a desktop size (1280x800): a call of the demo tool with its result,
    then an answer that thought first (its reasoning folded), mid-answer. Saved under
    test-artifacts/; with UPDATE_SCREENSHOT=1 it also replaces docs/screenshot.png, the README's
    picture."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, demo_deltas=24, demo_delta_ms=40)
    async with running_server(settings) as srv, srv.client(token) as client:
        await create_project(client, "Holiday ideas")
        project = await create_project(client, "Launch plan")

        async def generate(body: dict[str, Any]) -> None:
            response = await client.post(
                f"/api/projects/{project}/generations",
                json=body,
                headers={"Accept": "application/json"},
            )
            assert response.status_code == 202, response.text

        async def answered() -> bool:
            return all(m["status"] == "success" for m in await history(client, project))

        await generate({"message": "/tool When do we ship, in my time zone?"})
        await wait_for(answered, what="the tool call")
        [call] = (await history(client, project))[1]["tool_calls"]
        result = '{"time": "12/2/2026, 9:41:00 AM", "timezone": "Europe/Paris"}'
        await generate({"tool_results": [{"tool_call_id": call["id"], "content": result}]})
        await wait_for(answered, what="the answer to the tool's result")

        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        await send(page, "/think Draft the announcement, short and friendly.")
        await wait_for(lambda: _longer_than(page, 6, 90), what="the third answer to be under way")
        path = await browser.screenshot(page, "readme")
        mid_answer = await shown_messages(page)
        reasoning = answer(page, 6).locator(".reasoning")
        await expect(reasoning).to_be_visible()
        await expect(reasoning).not_to_have_attribute("open", "")
        await expect(page.locator(".tool-card .tool-result")).to_have_text(result)
        await expect(answer(page, 6)).to_have_attribute("data-status", "success")
        shown = await shown_messages(page)
        stored = await history(client, project)

    assert [m["sequence"] for m in mid_answer] == list(range(1, 7))
    assert mid_answer[-1]["status"] == "streaming"
    assert shown == as_shown(stored)
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, repo_root / "docs" / "screenshot.png")


async def _has_text(page: Any, sequence: int) -> bool:
    return await content_length(page, sequence) > 0


async def _longer_than(page: Any, sequence: int, length: int) -> bool:
    return await content_length(page, sequence) > length


async def _markup_check(page: Any, title: str) -> dict[str, Any]:
    return {
        "messages": await shown_messages(page),
        "elements": await page.locator(
            "#messages img, #messages script, #messages b, #projects img, #project-title *"
        ).count(),
        "title": await page.locator("#project-title").text_content(),
        "sidebar": await page.locator("#projects .project-title").first.text_content(),
    }
