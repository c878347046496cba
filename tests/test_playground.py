"""The playground, as a person uses it: a real browser types /imagine and sees the picture.

Needs Debian's chromium at /usr/bin/chromium (./dev test installs it when it can); playwright
drives it, no browser download.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
from pathlib import Path

import discord
import pytest
from PIL import Image

from bot.config import Settings
from bot.demo.world import dominant_colours
from cogs.playground import run_playground
from tests.helpers import eventually

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER = pytest.mark.skipif(
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


async def settled(page) -> None:
    """The page takes one action at a time: wait until the last one is through."""
    await page.get_by_text("Completing action").wait_for(state="hidden", timeout=120_000)


async def command(page, slash: str, **options: object) -> None:
    """Type /NAME in the composer, fill its options (optional ones added through "+ N more"), send;
    and again, as a person would, when the page was still busy and did not take it."""
    used = page.locator("main").get_by_text(f"used /{slash.split()[0]}")
    before = await used.count()
    for _ in range(3):
        await settled(page)
        # A command the page did not take (refused as stale: the page was republished as it was sent)
        # stays drafted, the message box hidden behind it: leave it, as a person clicks its ×.
        leave = page.get_by_role("button", name="Exit command mode")
        if await leave.count():
            await leave.first.click()
        composer = page.locator("#channel-composer-input")
        # The page draws the composer once it has the server's state: on a loaded machine that can take
        # longer than a click's 30 s (the same two minutes `settled` allows).
        try:
            await composer.wait_for(state="visible", timeout=120_000)
        except Exception as e:
            raise AssertionError(f"{e}\nthe page showed:\n{(await page.locator('body').inner_text())[-2000:]}") from e
        await composer.fill("")  # leaving a command puts "/name" back in the box
        await composer.click()
        await composer.type(f"/{slash}")
        await page.keyboard.press("Enter")
        for option, value in options.items():
            if option not in ("prompt", "name"):  # a required option is offered at once
                await page.locator(".command-ghost").first.click()
                await page.locator(".command-popup").get_by_text(option, exact=True).click()
            await page.locator(f'.command-option-input[data-option="{option}"]').fill(str(value))
        await page.keyboard.press("Enter")
        for _ in range(200):  # up to 20 s for the page to show the command was used
            if await used.count() > before:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"/{slash} was not taken by the page")


async def watch(page, until: str) -> list[str]:
    """The job states the page shows, in order, until `until` appears."""
    seen: list[str] = []

    async def shown() -> bool:
        text = await page.locator("main").inner_text()
        for state in ("Queued", "Starting", "Step ", until):
            if state in text and state not in seen:
                seen.append(state)
        return until in seen

    await eventually(shown, f"{until!r} appeared on the page")
    return seen


async def imagine_in_browser(p, address: str, prompt: str, **options: object):
    """Open the playground page, run /imagine with `prompt`, wait for the result's buttons; the page."""
    browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    await page.goto(address)
    await command(page, "imagine", prompt=prompt, **options)
    try:
        await page.get_by_role("button", name="Reroll").wait_for(timeout=120_000)
    except Exception as e:
        raise AssertionError(f"{e}\nthe page showed:\n{(await page.locator('main').inner_text())[-1500:]}") from e
    return browser, page


@BROWSER
@pytest.mark.slow
async def test_imagine_in_the_browser(tmp_path: Path) -> None:
    """/imagine shows its progress (the page used to freeze on "Completing action…" to the end), Cancel
    cancels, and the server's own commands answer the playground's user."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import async_playwright

    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data", devices=["cpu"], cooldown_seconds=0)
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(run_playground(settings, on_ready=url.set_result, stop=stop))
    try:
        address = await asyncio.wait_for(asyncio.shield(url), timeout=120)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            await page.goto(address)
            await command(page, "imagine", prompt="a red circle on a blue background", steps=150, seed=2)
            seen = await watch(page, "Reroll")
            assert "Step " in seen and seen.index("Step ") < seen.index("Reroll"), seen  # progress before the picture
            text = await page.locator("body").inner_text()
            assert "a red circle on a blue background" in text and "easel-demo" in text
            assert "draws only coloured shapes" in text  # the demo model says what it is, and what next
            picture = page.get_by_alt_text("Embed 1 image")
            await picture.wait_for(timeout=10_000)
            await page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=await picture.element_handle()
            )
            assert await picture.evaluate("img => img.naturalWidth") == 64  # the real 64-px picture, decoded
            png = await picture.evaluate(
                "async img => Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer()))"
            )
            assert dominant_colours(Image.open(io.BytesIO(bytes(png)))) == ("red", "blue")  # what was asked
            await page.screenshot(path=str(tmp_path / "playground.png"))
            if os.environ.get("EASEL_README_SCREENSHOT"):  # the README's picture, taken from this page
                shutil.copyfile(tmp_path / "playground.png", os.environ["EASEL_README_SCREENSHOT"])

            await command(page, "checkpoints info", name="easel-demo")
            await page.locator("main").get_by_text("Easel's demo model: a small SD1-layout checkpoint").wait_for(
                timeout=30_000
            )  # its description, from the A1111 user-metadata file shipped beside it

            await command(page, "imagine", prompt="a second lighthouse", steps=150, hires=2)
            cancel = page.get_by_role("button", name="Cancel")
            await cancel.wait_for(timeout=120_000)
            await page.screenshot(path=str(tmp_path / "running.png"))
            # A click that crosses a progress edit in flight is refused as stale by the page, as a
            # person would see it, and clicked again.
            for _ in range(3):
                await settled(page)
                await cancel.click()
                with contextlib.suppress(PlaywrightTimeout):
                    await page.get_by_text("Cancelling").or_(page.get_by_text("Cancelled")).first.wait_for(timeout=5_000)
                    break
            await page.locator("main").get_by_text("Cancelled (job").first.wait_for(timeout=60_000)

            await command(page, "queue")
            await page.locator("main").get_by_text("Nothing is waiting or running in this server.").first.wait_for(timeout=30_000)
            await command(page, "settings show")
            await page.locator("main").get_by_text("Settings here").first.wait_for(timeout=30_000)
            await page.screenshot(path=str(tmp_path / "commands.png"))
            await browser.close()
    finally:
        stop.set()
        await asyncio.wait_for(server, timeout=60)
    for shot in ("playground.png", "running.png", "commands.png"):
        assert (tmp_path / shot).stat().st_size > 10_000


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@BROWSER
@pytest.mark.slow
async def test_the_running_bot_serves_a_picture_without_torch(tmp_path: Path) -> None:
    """`python bot.py` with no token starts the playground and says why; the rule is about the bot
    process while it works: torch is mapped in its worker, never in it; Ctrl-C (SIGINT to its process
    group, as a terminal sends it) ends the bot and its workers without a traceback."""
    import os
    import signal
    import sys

    from playwright.async_api import async_playwright

    from tests.conftest import REPO, interruptible

    environment = {k: v for k, v in os.environ.items() if "TOKEN" not in k}
    environment |= {"EASEL_MODELS_DIR": str(tmp_path / "models"), "EASEL_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "models").mkdir()
    errors = (tmp_path / "bot.err").open("w")  # what the bot logs: shown if the browser waits in vain
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bot.py"), cwd=tmp_path, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=errors, preexec_fn=interruptible, process_group=0,
    )  # fmt: skip
    try:
        line = b""
        while b"Easel playground: open" not in line:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=120)
            assert line, "the bot exited before the playground was up"
        address = line.decode().split("open ", 1)[1].split()[0]
        async with async_playwright() as p:
            try:
                # a fixed seed: a random one's picture was once withheld by the picture check (a false
                # positive on the demo model), and the result's buttons never came
                browser, _ = await imagine_in_browser(p, address, "a windmill", seed=2)
            except Exception as e:
                raise AssertionError(f"{e}\nthe bot logged:\n{(tmp_path / 'bot.err').read_text()[-3000:]}") from e
            await browser.close()
        workers = [pid for pid in _children(process.pid) if _maps_torch(pid)]
        assert workers, "no child process of the bot has torch mapped: the check would prove nothing"
        assert not _maps_torch(process.pid), "torch is loaded in the bot process"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        await asyncio.wait_for(process.wait(), timeout=60)
        errors.close()
    logged = (tmp_path / "bot.err").read_text()
    assert "No Discord token" in logged
    assert "KeyboardInterrupt" not in logged and "Traceback" not in logged, logged[-2000:]


async def test_the_demo_world_keeps_its_own_registry(tmp_path: Path, tiny_dir: Path) -> None:
    """The demo model and a real models folder never share a database: neither marks the other missing."""
    from bot.demo import DEMO_FILE
    from cogs.playground import playground_settings

    settings = Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    old = tmp_path / "data" / "playground" / "models" / "easel-demo-tiny-sd1.safetensors"
    old.parent.mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", old)  # what earlier versions put there: random weights
    demo = await playground_settings(settings)
    assert demo.data_dir == tmp_path / "data" / "playground" and demo.models_dir == demo.data_dir / "models"
    assert demo.database_path != settings.database_path
    assert sorted(p.name for p in demo.models_dir.iterdir()) == ["Lora", "easel-demo.json", "easel-demo.safetensors"]
    assert [p.name for p in (demo.models_dir / "Lora").iterdir()] == ["easel-demo-paper.safetensors"]
    (demo.models_dir / "easel-demo.safetensors").write_bytes(b"an older demo")
    await playground_settings(settings)
    assert (demo.models_dir / "easel-demo.safetensors").read_bytes() == DEMO_FILE.read_bytes()  # brought up to date
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", tmp_path / "models" / "mine.safetensors")
    assert await playground_settings(settings) == settings  # a real checkpoint: the real world


async def test_a_message_the_bot_posts_on_its_own_reaches_the_page() -> None:
    """The finished picture is posted some awaits after the worker's last event, with no person acting:
    the page is republished for it all the same (it once waited for a job event that never came)."""
    import simcord
    from discord.ext import commands

    from cogs.playground import LivePage

    bot = commands.Bot(command_prefix="!", intents=discord.Intents.default())
    async with simcord.run(bot) as env:
        channel = env.create_guild().create_text_channel("imagine")
        live = LivePage(env, channel)
        live.follow(bot)
        shown = asyncio.Event()

        class Page:  # what LivePage needs of simcord's Preview: the republish, recorded
            async def refresh(self) -> None:
                if any(m.content == "the picture" for m in channel.history()):
                    shown.set()

        republishing = asyncio.create_task(live.run(Page()))
        try:
            await bot.get_channel(channel.id).send("the picture")
            await asyncio.wait_for(shown.wait(), timeout=30)
        finally:
            republishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await republishing
