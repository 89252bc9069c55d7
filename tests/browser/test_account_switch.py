"""A link with another account's token does not sign a signed-in page into that account until the
person says so (issue Reliability II, item 7): on a new page load and on a hashchange alike."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Page, expect

from tests.browser.helpers import Browser, sign_in
from tests.support import create_project, create_user, running_server, settings_for


async def whoami(page: Page) -> Any:
    """Who the page's own cookie signs in as, asked from inside the page."""
    return await page.evaluate(
        """async () => {
             const response = await fetch('/api/session', { cache: 'no-store' });
             return response.ok ? (await response.json()).username : response.status;
           }"""
    )


async def test_a_link_with_another_accounts_token_asks_before_switching(
    database_url: str, browser: Browser
) -> None:
    alice = await create_user(database_url, "alice")
    mallory = await create_user(database_url, "mallory")
    async with running_server(settings_for(database_url)) as srv:
        async with srv.client(alice) as as_alice:
            await create_project(as_alice, "Alice's notes")
        page = await browser.new_page()
        await sign_in(page, srv.base_url, alice)
        await expect(page.locator("#account")).to_have_text("alice")
        await expect(page.locator("#project-title")).to_have_text("Alice's notes")
        dialog = page.locator("#switch-account")

        # 1. The link opened in the tab already showing the page: only the fragment changes.
        await page.goto(f"{srv.base_url}/#token={mallory}")
        await expect(dialog).to_be_visible()
        await expect(dialog.locator(".signed-in-username").first).to_have_text("alice")
        await expect(dialog.locator(".token-username").first).to_have_text("mallory")
        assert "token" not in page.url, page.url
        assert await whoami(page) == "alice"  # asking changed nothing
        await dialog.locator("button.stay").click()
        await expect(dialog).to_be_hidden()
        assert await whoami(page) == "alice"
        await expect(page.locator("#account")).to_have_text("alice")
        await expect(page.locator("#project-title")).to_have_text("Alice's notes")

        # 2. The link opened as a new page load (another tab of the same browser), then Escape.
        second = await browser.new_page()
        await second.goto(f"{srv.base_url}/#token={mallory}")
        second_dialog = second.locator("#switch-account")
        await expect(second_dialog).to_be_visible()
        await expect(second_dialog.locator(".signed-in-username").first).to_have_text("alice")
        await expect(second_dialog.locator(".token-username").first).to_have_text("mallory")
        assert await whoami(second) == "alice"
        await second.keyboard.press("Escape")
        await expect(second_dialog).to_be_hidden()
        assert await whoami(second) == "alice"
        await expect(second.locator("#account")).to_have_text("alice")

        # 3. The person chooses the link's account: now, and only now, it switches.
        await second.goto(f"{srv.base_url}/?again#token={mallory}")
        await expect(second_dialog).to_be_visible()
        assert await whoami(second) == "alice"
        await second_dialog.locator("button.switch").click()
        await expect(second_dialog).to_be_hidden()
        await expect(second.locator("#account")).to_have_text("mallory")
        assert await whoami(second) == "mallory"
        await expect(second.locator("#no-projects")).to_be_visible()  # mallory has none
        assert "token" not in second.url, second.url
