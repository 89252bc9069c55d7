"""The demo page for someone who chats all day: progress that means something, a cursor where the
text ends, errors that go away, a counter before the limit, signing in again when signed out, a
conversation that does not read like a debugging tool, and deleting a project."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from playwright.async_api import Page, expect

from server.generators.base import Delta, GenerationContext, Item, Progress
from tests.browser.helpers import Browser, answer, history, open_project, send, sign_in
from tests.support import GatedGenerator, create_project, create_user, running_server, settings_for


class SteppedGenerator:
    """Each item waits for the test to open its gate: ``steps[i]`` is yielded once ``gates[i]``
    is set (the first step is yielded at once)."""

    def __init__(self, steps: list[Item]) -> None:
        self.steps = steps
        self.gates = [asyncio.Event() for _ in steps]
        self.gates[0].set()

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        for gate, step in zip(self.gates, self.steps, strict=True):
            await gate.wait()
            yield step

    def release(self) -> None:
        for gate in self.gates:
            gate.set()


async def test_progress_shows_before_the_text_only_and_says_it_once(
    database_url: str, browser: Browser
) -> None:
    """Bug: the bar sat at 10% for the whole answer (the demo sends 0 and 10, then text), and
    the row read "writing Writing the answer". The stage's message shows until the text starts;
    a bar only for a percentage between 0 and 100; then the text is the progress."""
    token = await create_user(database_url, "alice")
    generator = SteppedGenerator(
        [
            Progress("thinking", "Reading the conversation", 0.0),
            Progress("writing", "Writing the answer", 10.0),
            Delta("Here it comes"),
            Delta(", and more."),
        ]
    )
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Progress")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        try:
            await send(page, "Go")
            reply = answer(page, 2)
            row = reply.locator(".progress-row")
            await expect(row).to_have_text("Reading the conversation", use_inner_text=True)
            await expect(row.locator("progress")).to_be_hidden()  # 0%: nothing done yet

            generator.gates[1].set()
            await expect(row).to_have_text("Writing the answer", use_inner_text=True)
            await expect(row.locator("progress")).to_be_visible()
            await expect(row.locator("progress")).to_have_attribute("value", "10")

            generator.gates[2].set()
            await expect(reply.locator(".content")).to_have_text("Here it comes")
            await expect(reply).to_have_attribute("data-status", "streaming")
            await expect(row).to_be_hidden()
        finally:
            generator.release()
        await expect(reply).to_have_attribute("data-status", "success")
        await expect(row).to_be_hidden()


async def _cursor_gap(page: Page, sequence: int) -> dict[str, Any]:
    """Where the streaming cursor is: which element draws it, how far the answer's box reaches
    below its text (a cursor on a line of its own adds a line), and the height of a line."""
    found: dict[str, Any] = (
        await answer(page, sequence)
        .locator(".content")
        .evaluate(
            """content => {
             const drawn = [content, ...content.querySelectorAll('*')].filter(
               (element) => getComputedStyle(element, '::after').content === '"▍"');
             // The lowest line of text (text nodes only: an element's box would include the
             // cursor's own line).
             const walker = document.createTreeWalker(content, NodeFilter.SHOW_TEXT);
             let lowest = content.getBoundingClientRect().top;
             for (let node = walker.nextNode(); node; node = walker.nextNode()) {
               const range = document.createRange();
               range.selectNodeContents(node);
               for (const rect of range.getClientRects()) lowest = Math.max(lowest, rect.bottom);
             }
             return {
               cursors: drawn.map((element) => element.tagName),
               below: content.getBoundingClientRect().bottom - lowest,
               line: parseFloat(getComputedStyle(content).lineHeight),
             };
           }"""
        )
    )
    return found


async def test_the_streaming_cursor_stays_on_the_last_line_of_text(
    database_url: str, browser: Browser
) -> None:
    """Bug: while an answer ending with a list streamed, its cursor dropped onto an empty line
    below the text (it was drawn after the list as a whole)."""
    token = await create_user(database_url, "alice")
    generator = SteppedGenerator(
        [Delta("Steps:\n\n- one\n- two"), Delta(" and three\n\nDone: a paragraph"), Delta(".")]
    )
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Cursor")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        try:
            await send(page, "List")
            reply = answer(page, 2)
            await expect(reply.locator(".content li")).to_have_count(2)
            await expect(reply).to_have_attribute("data-status", "streaming")
            in_list = await _cursor_gap(page, 2)

            generator.gates[1].set()
            await expect(reply.locator(".content p").last).to_have_text("Done: a paragraph")
            in_paragraph = await _cursor_gap(page, 2)
        finally:
            generator.release()
        await expect(reply).to_have_attribute("data-status", "success")
        finished = await _cursor_gap(page, 2)

    # Below the last text's glyphs there is at most their line's leading, not a line more.
    assert in_list["below"] < in_list["line"] / 2, f"the cursor is on a line of its own: {in_list}"
    assert in_list["cursors"] == ["LI"], in_list
    assert in_paragraph["below"] < in_paragraph["line"] / 2, in_paragraph
    assert in_paragraph["cursors"] == ["P"], in_paragraph
    assert finished["cursors"] == [], "a finished answer has no cursor"


async def test_an_error_banner_goes_when_the_next_action_succeeds_or_on_sign_out(
    database_url: str, browser: Browser
) -> None:
    """Bug: an error banner stayed through later sends that worked, and through a sign-out."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client, "Errors")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        banner = page.locator("#banner")

        async def fail() -> None:
            # A title over the 200 characters the server takes: 422, and a banner.
            await page.locator("#new-project-title").fill("t" * 201)
            await page.locator("#new-project-title").press("Enter")
            await expect(banner).to_be_visible()

        await fail()
        await send(page, "This one works")
        await expect(answer(page, 2)).to_have_attribute("data-status", "success")
        await expect(banner).to_be_hidden()

        await fail()
        await page.locator("#banner-dismiss").click()
        await expect(banner).to_be_hidden()

        await fail()
        await page.locator("#sign-out").click()
        await expect(page.locator("#signed-out")).to_be_visible()
        await expect(banner).to_be_hidden()


async def test_a_counter_warns_before_the_length_limit(database_url: str, browser: Browser) -> None:
    """The page knew nothing of MAX_MESSAGE_CHARS: a long message was refused only once sent.
    Near the server's limit a counter shows; over it, it says by how much, and Send waits."""
    token = await create_user(database_url, "alice")
    settings = settings_for(database_url, max_message_chars=100)
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Counting")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        box, counter = page.locator("#message-input"), page.locator("#message-counter")

        await box.fill("a" * 80)
        await expect(counter).to_be_hidden()
        await box.fill("é" * 95)  # characters, not bytes
        await expect(counter).to_have_text("95 / 100 characters")
        await expect(page.locator("#send")).to_be_enabled()
        await box.fill("a" * 105)
        await expect(counter).to_have_text("5 characters too long: the limit is 100.")
        await expect(counter).to_have_attribute("data-state", "over")
        await expect(page.locator("#send")).to_be_disabled()
        await box.press("Enter")
        await box.fill("a" * 100)
        await expect(page.locator("#send")).to_be_enabled()
        await box.press("Enter")
        await expect(answer(page, 2)).to_have_attribute("data-status", "success")
        await expect(counter).to_be_hidden()  # the box is empty again
        stored = await history(client, project)

    assert [m["content"] for m in stored[::2]] == ["a" * 100], "only the message that fits went"


async def test_signed_out_a_pasted_token_signs_in_again(
    database_url: str, browser: Browser
) -> None:
    """Bug: signed out, the page only said to open the URL `make run` printed: a dead end. It
    takes a token, signs in with POST /api/session, and never puts the token in a URL."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        project = await create_project(client, "Back again")
        page = await browser.new_page()
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        await sign_in(page, srv.base_url, token)
        await page.locator("#sign-out").click()
        await expect(page.locator("#signed-out")).to_be_visible()
        field = page.locator("#token-input")

        await field.fill("ord_not-a-real-token")
        await field.press("Enter")
        await expect(page.locator("#banner")).to_be_visible()
        await expect(page.locator("#app")).to_be_hidden()

        await field.fill(token)
        await page.locator("#sign-in button[type=submit]").click()
        await expect(page.locator("#app")).to_be_visible()
        await open_project(page, project)
        await expect(page.locator("#banner")).to_be_hidden()
        await expect(page.locator("#signed-out")).to_be_hidden()
        await expect(field).to_have_value("")
        final_url = page.url

    assert token not in final_url
    # (The first sign-in's fragment is never sent: the browser keeps it.)
    sent_with_token = [url for url in urls if token in url or "not-a-real-token" in url]
    assert sent_with_token == [], sent_with_token


async def test_bubbles_keep_their_details_one_click_away_and_copy_their_text(
    database_url: str, browser: Browser
) -> None:
    """Bug: every bubble showed its role, `#sequence` and a status pill ("success" on the user's
    own messages), and the empty pane a stray border. The details are in each message's menu,
    which also copies the message."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        page = await browser.new_page()
        await browser.context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=srv.base_url
        )
        await sign_in(page, srv.base_url, token)
        await expect(page.locator("#no-projects")).to_be_visible()
        # No project open: nothing above the (empty) conversation, no line across it.
        await expect(page.locator("#project-title")).to_be_hidden()
        await expect(page.locator(".conversation-head")).to_be_hidden()

        await send(page, "Copy me, please")
        reply = answer(page, 2)
        await expect(reply).to_have_attribute("data-status", "success")
        project = page.url.rsplit("=", 1)[1]
        stored = await history(client, project)
        question = page.locator('li.message[data-role="user"]')
        for bubble in (question, reply):
            shown = await bubble.inner_text()
            for debugging in ("success", "user", "assistant", "#1", "#2", "Sequence"):
                assert debugging not in shown, f"{debugging!r} shows in {shown!r}"
            await expect(bubble.locator(".details")).to_be_hidden()

        await reply.locator(".message-menu summary").click()
        details = reply.locator(".details")
        await expect(details).to_be_visible()
        await expect(details.locator(".sequence")).to_have_text("2")
        await expect(details.locator(".status")).to_have_text("success")
        await expect(details.locator(".finish-reason")).to_have_text("stop")
        await expect(details.locator(".usage")).to_have_text("3 prompt + 5 completion tokens")
        await expect(details.locator(".message-id")).to_have_text(stored[1]["id"])
        await reply.locator(".copy-message").click()
        await expect(reply.locator(".copy-message")).to_have_text("Copied")
        copied = await page.evaluate("navigator.clipboard.readText()")
        # A click elsewhere closes the menu.
        await page.locator("#scroller").click(position={"x": 5, "y": 5})
        await expect(details).to_be_hidden()

        await question.locator(".message-menu summary").click()
        await expect(question.locator(".status")).to_have_text("success")
        await question.locator(".copy-message").click()
        await expect(question.locator(".copy-message")).to_have_text("Copied")
        copied_question = await page.evaluate("navigator.clipboard.readText()")

    assert copied == stored[1]["content"], "the answer's Markdown, as written"
    assert copied_question == "Copy me, please"


async def test_deleting_the_open_project_stops_its_answer_and_opens_the_next(
    database_url: str, browser: Browser
) -> None:
    """Deleting a project from the page: asked in place (no dialog), its running answer ends
    (cancelled on the server), the project leaves the list and the next one opens."""
    token = await create_user(database_url, "alice")
    generator = GatedGenerator()
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        kept = await create_project(client, "Kept")
        doomed = await create_project(client, "Doomed")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, doomed)
        try:
            await send(page, "Never finished")
            await expect(answer(page, 2)).to_have_attribute("data-status", "streaming")
            stored = await history(client, doomed)

            await page.locator("#project-menu summary").click()
            await page.locator("#delete-project").click()
            await page.locator("#delete-confirm-no").click()  # changed my mind, once
            await expect(page.locator("#project-menu .menu-panel")).to_be_hidden()
            assert (await client.get(f"/api/projects/{doomed}")).status_code == 200

            await page.locator("#project-menu summary").click()
            await page.locator("#delete-project").click()
            await page.locator("#delete-confirm-yes").click()
            await open_project(page, kept)
        finally:
            generator.gate.set()
        await expect(page.locator("#project-title")).to_have_text("Kept")
        await expect(page.locator(f'#projects li[data-project-id="{doomed}"]')).to_have_count(0)
        await expect(page.locator("#projects li")).to_have_count(1)
        await expect(page.locator("#banner")).to_be_hidden()
        gone = await client.get(f"/api/projects/{doomed}")
        answer_gone = await client.get(f"/api/projects/{doomed}/messages/{stored[1]['id']}")

    assert gone.status_code == 404
    assert answer_gone.status_code == 404
    assert browser.dialogs == [], "asked in the page, not with a dialog"


async def test_renaming_the_open_project_from_its_menu(database_url: str, browser: Browser) -> None:
    """Renaming a project from the page: its title in a field in place (the project's menu),
    saved with Enter; the heading, the sidebar, the tab and the server all say the new one, and
    the project keeps its place in the list."""
    token = await create_user(database_url, "alice")
    async with running_server(settings_for(database_url)) as srv, srv.client(token) as client:
        older = await create_project(client, "Older")
        renamed = await create_project(client, "Untitled draft")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, renamed)
        await send(page, "Hello there")
        await expect(answer(page, 2)).to_have_attribute("data-status", "success")

        await page.locator("#project-menu summary").click()
        await page.locator("#rename-project").click()
        field = page.locator("#rename-title")
        await expect(field).to_be_focused()
        await expect(field).to_have_value("Untitled draft")
        await field.fill("Trip to Lisbon")
        await field.press("Enter")

        await expect(page.locator("#project-menu .menu-panel")).to_be_hidden()
        await expect(page.locator("#project-title")).to_have_text("Trip to Lisbon")
        entries = page.locator("#projects li .project-title")
        await expect(entries).to_have_text(["Trip to Lisbon", "Older"])
        await expect(page).to_have_title("Trip to Lisbon · Orderly")
        stored = (await client.get(f"/api/projects/{renamed}")).json()
        assert stored["title"] == "Trip to Lisbon"
        assert stored["message_count"] == 2

        # Opened again later, the menu offers the rename afresh, with the new title. A title of
        # spaces alone is not sent: the field says why, and stays open.
        await page.locator("#project-menu summary").click()
        await expect(page.locator("#rename-project")).to_be_visible()
        await expect(page.locator("#rename-form")).to_be_hidden()
        await page.locator("#rename-project").click()
        await expect(field).to_have_value("Trip to Lisbon")
        await field.fill("   ")
        await field.press("Enter")
        message = await field.evaluate("f => f.validationMessage")
        assert message == "A title needs more than spaces."
        await expect(page.locator("#rename-form")).to_be_visible()
        await page.keyboard.press("Escape")
        assert (await client.get(f"/api/projects/{renamed}")).json()["title"] == "Trip to Lisbon"
        await page.reload()
        await expect(page.locator("#project-title")).to_have_text("Trip to Lisbon")
        assert (await client.get(f"/api/projects/{older}")).json()["title"] == "Older"
    assert browser.dialogs == []
