"""Answers rendered as Markdown in a real Chromium: what renders, while it streams, and what
must never render (links to scripts, raw HTML, event handlers), whatever the model writes.

The answers come from a scripted generator, so that each test decides exactly what the model
"wrote"; the page and the server are the real ones.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from playwright.async_api import Page, expect

from server.generators.base import Delta, GenerationContext, Item, Progress
from server.generators.demo import split_evenly
from tests.browser.helpers import (
    Browser,
    answer,
    assert_prefixes,
    history,
    open_project,
    recorded,
    send,
    sign_in,
)
from tests.browser.markdown import rendered_text
from tests.support import create_project, create_user, running_server, settings_for


class ScriptedAnswers:
    """Answers each prompt with the text given for it, streamed in ``pieces`` deltas."""

    def __init__(self, answers: dict[str, str], *, pieces: int = 20, pause: float = 0.0) -> None:
        self.answers = answers
        self.pieces = pieces
        self.pause = pause

    async def __call__(self, context: GenerationContext) -> AsyncIterator[Item]:
        yield Progress("writing", "Writing the answer", 0.0)
        for part in split_evenly(self.answers[context.prompt], self.pieces):
            await asyncio.sleep(self.pause)
            yield Delta(part)


CODE = 'print("<b>not bold</b>")\nprint(1 < 2 and 3 > 2)\n'
RICH = f"""## Release checklist

1. Tag the release
2. Write the notes:
   - what changed
   - what *broke*

Run this first:

```python
{CODE}```

| step | owner | minutes |
|:-----|:-----:|--------:|
| tag | **ana** | 5 |
| notes | `bo` | 30 |

See [the guide](https://example.com/guide "The guide") or [write to us](mailto:team@example.com).
"""

# Each line is one way in; none may become a link to a script, an element or a handler.
HOSTILE = """[js](javascript:alert(1)) [upper](JAVASCRIPT:alert(2))
[entity](jav&#x61;script:alert(3))
[spaced](<javascript:alert(4)>) [data](data:text/html;base64,PHNjcmlwdD5hbGVydCg1KTwvc2NyaXB0Pg==)
[vb](vbscript:msgbox(6)) <javascript:alert(7)> [reference][evil] [relative](/api/session)

[evil]: javascript:alert(8)

![remote picture](https://example.com/pixel.png) ![local picture](/static/favicon.svg)

<img src=x onerror=alert(9)>

<script>alert(10)</script>

<a href="javascript:alert(11)">raw link</a> <svg onload=alert(12)></svg>
<iframe src="javascript:alert(13)"></iframe>

<div onclick="alert(14)" style="color: red">styled</div> <style>body { display: none }</style>

[quoted title](https://example.com/a "x&quot; onmouseover=&quot;alert(15)")

```html
<script>alert(16)</script>
```

Inline `<img src=x onerror=alert(17)>` and **<b onmouseover=alert(18)>bold</b>**.

[fine](https://example.com/fine)
"""

# What markdown.js lets through: the elements markdown-it makes, the code blocks' wrapper and
# copy button.
ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "pre",
    "code", "em", "strong", "s", "a", "table", "thead", "tbody", "tr", "th", "td", "div", "button",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "href", "title", "start", "class", "target", "rel", "type", "aria-label", "data-state",
}  # fmt: skip

# Every element and attribute under the answers' content, as the page has them.
DOM_SURVEY = """items => items.flatMap(item => [...item.querySelectorAll('.content *')].map(el => ({
    tag: el.localName,
    attributes: el.getAttributeNames(),
    href: el.getAttribute('href'),
})))"""


async def _ask(page: Page, prompt: str, sequence: int) -> None:
    await send(page, prompt)
    await expect(answer(page, sequence)).to_have_attribute("data-status", "success")


async def test_markdown_renders_lists_code_and_tables_while_streaming(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    generator = ScriptedAnswers({"Checklist?": RICH}, pieces=40, pause=0.05)
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Markdown")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        await send(page, "Checklist?")
        reply = answer(page, 2)
        content = reply.locator(".content")

        # Rendered while it streams: the list is a list before the answer is over.
        async def list_while_streaming() -> dict[str, Any]:
            found: dict[str, Any] = await reply.evaluate(
                "item => ({status: item.dataset.status,"
                " items: item.querySelectorAll('.content ol > li').length})"
            )
            return found

        seen = await list_while_streaming()
        while seen["items"] == 0 and seen["status"] in ("pending", "streaming"):
            await asyncio.sleep(0.02)
            seen = await list_while_streaming()
        assert seen["status"] == "streaming", f"the list showed only at the end: {seen}"
        # Later renders replace only the blocks that changed: this heading stays the same node.
        await content.locator("h2").evaluate("h2 => { h2.dataset.marked = 'yes'; }")
        await expect(reply).to_have_attribute("data-status", "success", timeout=10_000)
        await expect(content.locator("h2")).to_have_attribute("data-marked", "yes")

        await expect(content.locator("h2")).to_have_text("Release checklist")
        await expect(content.locator("ol > li")).to_have_count(2)
        await expect(content.locator("ol ul > li")).to_have_text(["what changed", "what broke"])
        await expect(content.locator("ol em")).to_have_text("broke")
        code = content.locator(".code-block pre > code")
        await expect(code).to_have_count(1)
        assert await code.text_content() == CODE
        await expect(code).to_have_class("language-python")
        await expect(content.locator("b")).to_have_count(0)  # the code's markup is text
        await expect(content.locator("table th")).to_have_text(["step", "owner", "minutes"])
        await expect(content.locator("table td")).to_have_count(6)
        await expect(content.locator("table strong")).to_have_text("ana")
        aligned = await content.locator("table th").evaluate_all(
            "ths => ths.map(th => th.className)"
        )
        assert aligned == ["align-left", "align-center", "align-right"]
        links = content.locator("a")
        await expect(links).to_have_count(2)
        for link, href in zip(
            await links.all(), ["https://example.com/guide", "mailto:team@example.com"], strict=True
        ):
            await expect(link).to_have_attribute("href", href)
            await expect(link).to_have_attribute("rel", "noopener noreferrer")
            await expect(link).to_have_attribute("target", "_blank")
        survey = await page.locator("li.message").evaluate_all(DOM_SURVEY)
        stored = await history(client, project)
        shown_text = await content.text_content()
        states = (await recorded(page))["answers"]

    assert not [el for el in survey if "style" in el["attributes"]], "the CSP allows no style"
    assert stored[1]["content"] == RICH
    assert shown_text == rendered_text(RICH)
    texts = assert_prefixes(states, stored[1]["id"], RICH)
    assert len(texts) >= 5, f"re-rendered while streaming, not only at the end: {len(texts)}"


async def test_copy_button_copies_a_code_block_or_selects_it(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    generator = ScriptedAnswers({"Code?": RICH})
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Copying")
        await browser.context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=srv.base_url
        )
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        await _ask(page, "Code?", 2)
        button = answer(page, 2).locator(".code-block button.copy-code")
        await expect(button).to_have_attribute("aria-label", "Copy code")
        assert await button.text_content() == "", "the label is CSS: copied text never has it"

        await button.click()
        await expect(button).to_have_attribute("data-state", "copied")
        copied = await page.evaluate("navigator.clipboard.readText()")

        # Without a clipboard (refused, or a page on plain http from another host): the code is
        # selected instead, for Ctrl+C.
        await page.evaluate(
            "() => { navigator.clipboard.writeText = () => Promise.reject(new Error('no')); }"
        )
        await button.click()
        await expect(button).to_have_attribute("data-state", "failed")
        selected = await page.evaluate("getSelection().toString()")

    # Without the newline that ends the block (pasted into a shell, it would run the last line).
    assert copied == selected == CODE.removesuffix("\n")


async def test_hostile_markdown_leaves_no_script_link_element_or_handler(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "mallory")
    generator = ScriptedAnswers({"Be nasty": HOSTILE})
    async with (
        running_server(settings_for(database_url), generator=generator) as srv,
        srv.client(token) as client,
    ):
        project = await create_project(client, "Hostile")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)
        await _ask(page, "Be nasty", 2)
        live = await _survey(page)
        await page.reload()  # from history this time, not from the stream
        await expect(answer(page, 2)).to_have_attribute("data-status", "success")
        reloaded = await _survey(page)
        for link in await page.locator("#messages .content a").all():
            await link.hover()  # an onmouseover would fire now
        await asyncio.sleep(0.3)  # an onerror would have fired by now
        dialogs = list(browser.dialogs)
        stored = await history(client, project)

    assert dialogs == [], f"the answer ran script: {dialogs}"
    assert stored[1]["content"] == HOSTILE
    for survey in (live, reloaded):
        assert survey["text"] == rendered_text(HOSTILE)
        tags = {element["tag"] for element in survey["elements"]}
        assert tags <= ALLOWED_TAGS, f"unexpected elements: {tags - ALLOWED_TAGS}"
        attributes = {name for element in survey["elements"] for name in element["attributes"]}
        assert attributes <= ALLOWED_ATTRIBUTES, f"unexpected: {attributes - ALLOWED_ATTRIBUTES}"
        hrefs = [element["href"] for element in survey["elements"] if element["tag"] == "a"]
        # Only the three http(s) links survive (the remote picture became a plain link).
        assert hrefs == [
            "https://example.com/pixel.png",
            "https://example.com/a",
            "https://example.com/fine",
        ]
        # The raw HTML is there, as text.
        for markup in (
            "<img src=x onerror=alert(9)>",
            "<script>alert(10)</script>",
            '<a href="javascript:alert(11)">raw link</a>',
            '<div onclick="alert(14)" style="color: red">styled</div>',
            "<script>alert(16)</script>",
        ):
            assert markup in survey["text"]
        assert survey["quoted_title"] == 'x" onmouseover="alert(15)'


async def _survey(page: Page) -> dict[str, Any]:
    content = answer(page, 2).locator(".content")
    return {
        "elements": await page.locator("li.message").evaluate_all(DOM_SURVEY),
        "text": await content.text_content(),
        "quoted_title": await content.locator('a[href="https://example.com/a"]').get_attribute(
            "title"
        ),
    }


def test_the_hostile_answer_is_hostile() -> None:
    """The control: rendered with raw HTML allowed, the same answer would be full of scripts,
    so the tests above would catch a page that let it through."""
    from markdown_it import MarkdownIt

    unsafe = MarkdownIt("commonmark", {"html": True}).render(HOSTILE)
    assert re.search(r"<script>alert\(10\)</script>", unsafe)
    assert "<img src=x onerror=alert(9)>" in unsafe
