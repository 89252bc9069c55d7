"""Driving the demo page: sign-in, sending, and a recorder of everything an answer showed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.browser.markdown import rendered_text

if TYPE_CHECKING:
    import httpx
    from playwright.async_api import BrowserContext, Dialog, Locator, Page

# Installed before the page's own scripts (through DevTools, so the page's CSP does not apply).
# A MutationObserver writes down every distinct state of every assistant message and of the
# connection indicator, so that a test can check the whole history of what was shown (each
# partial text a prefix of the final one, progress before text...) and not only where it ended.
RECORDER = """
(() => {
  const record = { answers: [], connection: [], violations: [] };
  window.__orderly = record;
  document.addEventListener('securitypolicyviolation', (event) => {
    record.violations.push(`${event.violatedDirective} ${event.blockedURI}`);
  });
  const last = new Map();
  const snapshot = () => {
    const indicator = document.getElementById('connection');
    const state = indicator?.dataset.state;
    if (state && record.connection.at(-1) !== state) record.connection.push(state);
    for (const item of document.querySelectorAll('li.message[data-role="assistant"]')) {
      const entry = {
        id: item.dataset.id,
        sequence: Number(item.dataset.sequence),
        status: item.dataset.status,
        content: item.querySelector('.content').textContent,
        stage: item.querySelector('.progress-stage').textContent,
        progressShown: !item.querySelector('.progress-row').hidden,
      };
      const key = JSON.stringify(entry);
      if (last.get(entry.id) !== key) {
        last.set(entry.id, key);
        record.answers.push(entry);
      }
    }
  };
  new MutationObserver(snapshot).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
})();
"""


@dataclass
class Browser:
    """One Chromium (one persistent context); its pages are watched for errors."""

    context: BrowserContext
    artifacts: Path
    test_name: str
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)

    async def new_page(self) -> Page:
        page = self.context.pages[0] if not self.pages and self.context.pages else None
        if page is None:
            page = await self.context.new_page()
        await page.add_init_script(RECORDER)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("dialog", self._on_dialog)
        self.pages.append(page)
        return page

    async def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    async def check_pages(self) -> None:
        """After the test: no uncaught exception, no CSP violation, no dialog left unexplained."""
        violations = []
        for page in self.pages:
            if not page.is_closed():
                violations += (await recorded(page))["violations"]
        assert self.page_errors == [], f"the page threw: {self.page_errors}"
        assert violations == [], f"the page violated its Content-Security-Policy: {violations}"

    async def screenshot_all(self, label: str) -> None:
        for number, page in enumerate(self.pages, 1):
            if not page.is_closed():
                await self.screenshot(page, f"{label}-tab{number}")

    async def screenshot(self, page: Page, label: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{self.test_name}-{label}.png"
        await page.screenshot(path=str(path))
        return path


async def sign_in(page: Page, base_url: str, token: str) -> None:
    """Open the page the way `make run`'s URL does: the token in the fragment."""
    await page.goto(f"{base_url}/#token={token}")
    await page.locator("#app").wait_for(state="visible", timeout=10_000)
    assert "token" not in page.url, f"the token must leave the address bar: {page.url}"


async def open_project(page: Page, project_id: str) -> None:
    """Wait until the page shows this project with its history loaded."""
    await page.wait_for_function(
        """(id) => new URLSearchParams(location.search).get('project') === id
                  && !document.querySelector('#message-input').disabled""",
        arg=project_id,
        timeout=10_000,
    )


async def send(page: Page, text: str) -> None:
    box = page.locator("#message-input")
    await box.fill(text)
    await box.press("Enter")


def answer(page: Page, sequence: int) -> Locator:
    return page.locator(f'li.message[data-role="assistant"][data-sequence="{sequence}"]')


async def recorded(page: Page) -> dict[str, Any]:
    found: dict[str, Any] = await page.evaluate("window.__orderly")
    return found


async def shown_messages(page: Page) -> list[dict[str, Any]]:
    """What the page shows, top to bottom."""
    found: list[dict[str, Any]] = await page.locator("li.message").evaluate_all(
        """items => items.map(item => ({
             id: item.dataset.id,
             sequence: Number(item.dataset.sequence),
             role: item.dataset.role,
             status: item.dataset.status,
             content: item.querySelector('.content').textContent,
           }))"""
    )
    return found


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def content_length(page: Page, sequence: int) -> int:
    locator = answer(page, sequence).locator(".content")
    if await locator.count() == 0:
        return 0
    return len(await locator.text_content() or "")


async def get_message(client: httpx.AsyncClient, project_id: str, message_id: str) -> Any:
    response = await client.get(f"/api/projects/{project_id}/messages/{message_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def history(client: httpx.AsyncClient, project_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/projects/{project_id}/messages", params={"limit": 200})
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def shown_content(message: dict[str, Any]) -> str:
    """The text the page shows for a stored message: an answer's Markdown is rendered, the
    user's own text is shown as typed."""
    content: str = message["content"]
    return rendered_text(content) if message["role"] == "assistant" else content


def assert_prefixes(states: list[dict[str, Any]], message_id: str, final: str) -> list[str]:
    """Every text the page showed for this answer was the rendering of a prefix of its final
    content: nothing was shown twice or out of order on the way. Returns the distinct texts, in
    order."""
    renderings = {rendered_text(final[:end]) for end in range(len(final) + 1)}
    texts: list[str] = []
    for state in states:
        if state["id"] != message_id:
            continue
        assert state["content"] in renderings, (
            f"the page showed {state['content']!r}, which is not the rendering of a prefix of "
            f"the final content {final!r}"
        )
        if not texts or texts[-1] != state["content"]:
            texts.append(state["content"])
    return texts


class CuttableProxy:
    """A TCP relay in front of the server whose connections can be cut, like a network outage.

    Chromium's offline emulation (``context.set_offline``) refuses new requests but leaves an
    open EventSource response streaming, so on its own it cannot test resuming. Going through
    this relay, ``cut()`` also breaks every open connection, as a real outage would."""

    def __init__(self, target_url: str) -> None:
        self.target_port = int(target_url.rsplit(":", 1)[1])
        self.up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Break every open connection; new ones are refused until ``restore()``."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pumps = [self._pump(reader, up_writer), self._pump(up_reader, writer)]
        for pump in pumps:
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
