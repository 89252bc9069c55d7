"""A model's reasoning shows folded above its answer: "Thinking…" while it streams, then
"Thought for N s", its text hidden until the fold is opened, and never in the answer's text;
the same after a reload, from history. The demo generator reasons for a message that starts
with /think; a message without it shows no fold."""

from __future__ import annotations

import math
import re

from playwright.async_api import expect

from server.generators.demo import demo_answer, demo_reasoning
from tests.browser.helpers import Browser, answer, history, open_project, send, sign_in
from tests.support import create_project, create_user, running_server, settings_for

THOUGHT = re.compile(r"^Thought for [1-9][0-9]* s$")
# Every distinct state of the answers' folds, as the page showed them (a MutationObserver, so no
# state is missed however fast it passes): the summary, whether the fold shows, whether it is
# open, and the answer's text.
FOLDS = """
(() => {
  const seen = [];
  window.__folds = seen;
  new MutationObserver(() => {
    for (const item of document.querySelectorAll('li.message[data-role="assistant"]')) {
      const fold = item.querySelector('.reasoning');
      const state = {
        sequence: Number(item.dataset.sequence),
        summary: fold.querySelector('summary').textContent,
        shown: !fold.hidden,
        open: fold.open,
        content: item.querySelector('.content').textContent,
      };
      const last = seen.filter((s) => s.sequence === state.sequence).at(-1);
      if (JSON.stringify(last) !== JSON.stringify(state)) seen.push(state);
    }
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
})();
"""


async def test_reasoning_is_shown_folded_live_and_from_history(
    database_url: str, browser: Browser
) -> None:
    token = await create_user(database_url, "alice")
    # Slow enough that the page sees the reasoning stream before the text starts.
    settings = settings_for(database_url, demo_deltas=12, demo_delta_ms=120)
    prompt = "/think What is two and two?"
    async with running_server(settings) as srv, srv.client(token) as client:
        project = await create_project(client, "Thinking")
        page = await browser.new_page()
        await page.add_init_script(FOLDS)
        await sign_in(page, srv.base_url, token)
        await open_project(page, project)

        await send(page, prompt)
        thinking = answer(page, 2)
        fold = thinking.locator(".reasoning")
        summary = fold.locator("summary")
        await expect(thinking).to_have_attribute("data-status", "success", timeout=20_000)
        live = [s for s in await page.evaluate("window.__folds") if s["sequence"] == 2]
        await expect(summary).to_have_text(THOUGHT)
        await expect(thinking.locator(".reasoning-text")).to_be_hidden()
        await summary.click()
        await expect(thinking.locator(".reasoning-text")).to_be_visible()
        await expect(thinking.locator(".reasoning-text")).to_have_text(demo_reasoning(prompt))
        content = thinking.locator(".content")
        await expect(content).not_to_contain_text("I reason before I answer")

        await send(page, "And without thinking?")
        plain = answer(page, 4)
        await expect(plain).to_have_attribute("data-status", "success", timeout=20_000)
        await expect(plain.locator(".reasoning")).to_be_hidden()

        stored = await history(client, project)
        # From history, the time the worker measured (whole seconds, at least 1).
        seconds = max(1, math.floor(stored[1]["reasoning_ms"] / 1000 + 0.5))
        await page.reload()
        await open_project(page, project)
        again = answer(page, 2)
        await expect(again.locator(".reasoning")).to_be_visible()
        await expect(again.locator(".reasoning summary")).to_have_text(f"Thought for {seconds} s")
        await expect(again.locator(".reasoning-text")).to_be_hidden()
        await again.locator(".reasoning summary").click()
        await expect(again.locator(".reasoning-text")).to_have_text(demo_reasoning(prompt))
        await expect(answer(page, 4).locator(".reasoning")).to_be_hidden()
    assert stored[1]["reasoning"] == demo_reasoning(prompt)
    assert stored[1]["content"] == demo_answer(prompt)
    assert stored[3]["reasoning"] is None
    # Live: the fold appeared folded, saying "Thinking…" before any text of the answer; it
    # said how long once the text started; it never opened by itself.
    thinking_states = [s for s in live if s["shown"] and s["summary"] == "Thinking…"]
    assert thinking_states, live
    assert all(s["content"] == "" for s in thinking_states), "Thinking… only before the text"
    first_text = next(i for i, s in enumerate(live) if s["content"])
    assert live.index(thinking_states[0]) < first_text
    assert all(THOUGHT.match(s["summary"]) for s in live[first_text:]), live[first_text:]
    assert not any(s["open"] for s in live)
    # What the page showed while it streamed: the answer's text never held the reasoning.
    shown = await page.evaluate("window.__orderly.answers")
    assert all("I reason before I answer" not in entry["content"] for entry in shown)
    assert not browser.page_errors
