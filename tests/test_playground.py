"""The playground, as a person uses it: a real browser types /imagine and sees the picture.

Needs Debian's chromium at /usr/bin/chromium (./dev test installs it when it can); playwright
drives it, no browser download.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bot.config import Settings
from cogs.playground import run_playground

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def test_imagine_in_the_browser(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", devices=["cpu"])
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(run_playground(settings, on_ready=url.set_result, stop=stop))
    try:
        address = await asyncio.wait_for(asyncio.shield(url), timeout=120)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            await page.goto(address)
            composer = page.locator("#channel-composer-input")
            await composer.click()
            await composer.type("/imagine")
            await page.keyboard.press("Enter")
            await page.keyboard.type("a lighthouse at dusk, oil painting")
            await page.keyboard.press("Enter")
            await page.get_by_role("button", name="Reroll").wait_for(timeout=60_000)
            text = await page.locator("body").inner_text()
            assert "a lighthouse at dusk, oil painting" in text and "easel-demo-tiny-sd1" in text
            picture = page.get_by_alt_text("Embed 1 image")
            await picture.wait_for(timeout=10_000)
            await page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=await picture.element_handle()
            )
            assert await picture.evaluate("img => img.naturalWidth") == 64  # the real 64-px picture, decoded
            await page.screenshot(path=str(tmp_path / "playground.png"))
            await browser.close()
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=60)
    assert (tmp_path / "playground.png").stat().st_size > 10_000
