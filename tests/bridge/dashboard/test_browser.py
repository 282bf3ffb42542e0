"""The dashboard page in headless Chromium (Debian's ``chromium``, driven by Playwright).

The demo stack (Bridge + five services over HTTPS) runs in this test's event
loop on a free block of ports; the page must show its services and show a new
event emitted after it loaded within 2 s.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exprsn_ipc.cli.demo import DemoStack

from ...e2e.ports import free_port_offset

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DemoStack]:
    async with DemoStack(tmp_path / "demo", port_offset=free_port_offset()) as running:
        yield running


async def test_the_dashboard_shows_the_services_and_new_events_live(stack: DemoStack) -> None:
    from playwright.async_api import async_playwright

    assert shutil.which("chromium") or Path(CHROMIUM).exists(), "install Debian's chromium (scripts/test.sh does)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The demo CA is not in Chromium's trust store; the page's TLS is tested elsewhere.
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{stack.bridge_url}/dashboard", wait_until="load")
            await page.locator('#status[data-state="live"]').wait_for(timeout=5000)
            for name in ("exprsn-auth", "exprsn-timeline", "exprsn-herald", "exprsn-spark", "exprsn-moderator"):
                await page.locator(f'#services tr[data-service="{name}"]').wait_for(timeout=5000)
            assert await page.locator("#connections tbody tr").count() == 5

            nonce = secrets.token_hex(6)
            timeline = stack.services["exprsn-timeline"].app.state.ipc
            emitted = time.monotonic()
            await timeline.emit("dashboard:probe", {"nonce": nonce, "password": "never-shown"})
            row = page.locator('#events tr[data-event="dashboard:probe"]', has_text=nonce)
            await row.wait_for(timeout=2000)
            assert time.monotonic() - emitted < 2.0
            text = await row.inner_text()
            assert "exprsn-timeline" in text and "broadcast" in text and "never-shown" not in text
            await page.locator('#rates tr[data-event="dashboard:probe"]').wait_for(timeout=3000)
            assert errors == []
        finally:
            await browser.close()
