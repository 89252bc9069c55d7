"""The browser fixture: Debian's Chromium driven by Playwright, sharing the test's event loop.

No browser is ever downloaded: the tests use the system's Chromium (``/usr/bin/chromium``, or
``$CHROMIUM``). Without it they are skipped on a developer's machine, but fail under CI (``CI``
set to anything but empty, ``0`` or ``false``), so a CI machine can never pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.helpers import Browser

if TYPE_CHECKING:
    from playwright.async_api import Playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Lets the browser fixture know whether the test failed (to keep a screenshot of it)."""
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    """Skip here, fail in CI: a CI machine must really run the browser tests."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
async def playwright_driver() -> AsyncIterator[Playwright]:
    executable = shutil.which(CHROMIUM)
    if executable is None:
        _unavailable(
            f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
            "(or point $CHROMIUM at a Chromium binary)"
        )
    from playwright.async_api import async_playwright  # the dev extra installs it

    async with async_playwright() as driver:
        yield driver


@pytest.fixture
async def browser(
    playwright_driver: Playwright, tmp_path: Path, repo_root: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Browser]:
    """A fresh headless Chromium with its own new user-data directory, closed after the test.

    Its pages record uncaught exceptions, CSP violations and every state an answer went
    through; the test fails if the page threw or violated its Content-Security-Policy. When the
    test failed, a screenshot of each page is left in test-artifacts/."""
    options: dict[str, Any] = {
        "executable_path": shutil.which(CHROMIUM),
        "headless": True,
        "args": CHROMIUM_ARGS,
        "viewport": {"width": 1280, "height": 800},
        "color_scheme": "light",
        "locale": "en-US",
        "timezone_id": "UTC",
    }
    context = await playwright_driver.chromium.launch_persistent_context(
        tmp_path / "chromium-profile", **options
    )
    artifacts = repo_root / "test-artifacts"
    found = Browser(context, artifacts, request.node.name)
    try:
        yield found
        if request.node.stash.get(CALL_FAILED, False):
            await found.screenshot_all("failed")
        await found.check_pages()
    finally:
        await context.close()
