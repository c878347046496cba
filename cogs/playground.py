"""The playground: the real bot, services and worker against simcord's in-process Discord, shown
as a Discord-like page in your browser. No token, no account. `python bot.py` without a token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import discord
import simcord

from bot.config import Settings
from bot.demo import install_demo
from bot.model_files import scan_models
from bot.services import Services, open_services
from cogs.app import create_bot

log = logging.getLogger(__name__)
T = TypeVar("T")


async def playground_settings(settings: Settings) -> Settings:
    """The user's models when a runnable one is there; otherwise Easel's demo model (bot/demo), in a
    world of its own (its own data folder and database): the demo's folder and the real models folder
    never share a registry, so neither marks the other's checkpoints missing."""
    root = settings.models_dir.expanduser()
    if root.is_dir() and any(p.suffix in (".safetensors", ".ckpt") for p in root.rglob("*")):
        return settings
    demo_data = settings.data_dir / "playground"
    demo_dir = demo_data / "models"
    await asyncio.to_thread(install_demo, demo_dir)
    # Earlier versions put a random-weight model here; the trained one replaces it.
    (demo_dir / "easel-demo-tiny-sd1.safetensors").unlink(missing_ok=True)
    log.info("no checkpoints in %s: the playground runs Easel's demo model (coloured shapes only)", root)
    return settings.model_copy(update={"models_dir": demo_dir, "data_dir": demo_data})


def playground_world(
    env: simcord.Env, services: Services
) -> tuple[simcord.ChannelHandle, simcord.MemberActor, simcord.MemberActor]:
    """The playground's server: one channel; you, who run the server and own the bot, so that
    /settings, /queue and /admin are all yours to try; and a member with no say, whose view (the
    page's viewer switch) shows what ordinary users see."""
    guild = env.create_guild()
    channel = guild.create_text_channel("imagine")
    managers = guild.create_role("Managers", permissions=discord.Permissions(manage_guild=True))
    you = guild.add_member(env.create_user("you"), roles=[managers])
    member = guild.add_member(env.create_user("member"))
    services.settings.owner_ids.append(you.id)
    return channel, you, member


class LivePage:
    """Keeps the page moving like Discord's while jobs run. simcord publishes a page's state when a
    person acts, and runs the bot on a simulated clock that moves only when asked (its
    `advance_time`). So a job the bot awaited inside the action froze the page on "Completing
    action…" to the end, and, the clock standing still, progress edits (at most one per 1.5 s) and
    cooldowns never came due. Here the bot's waits on the worker are declared external
    (`Env.external_wait`: the action settles once the job is queued), the simulated clock follows the
    wall clock, and a job event that changed the channel republishes the page (`Preview.refresh`),
    which the page polls. Only a real change republishes: a click is refused as stale when the page
    was republished since the browser last read it."""

    TICK = 0.25  # seconds between clock moves

    def __init__(self, env: simcord.Env, channel: simcord.ChannelHandle) -> None:
        self.env = env
        self.channel = channel
        self.changed = asyncio.Event()
        self._shown: tuple = ()

    def _fingerprint(self) -> tuple:
        """What the page shows of the channel's latest messages."""
        return tuple(
            (m.id, m.content, m.edited_at, len(m.attachments), len(m.embeds), len(m.components))
            for m in self.channel.history()[-20:]
        )

    async def external_wait(self, awaitable: Awaitable[T], *, reason: str) -> T:
        try:
            return await self.env.external_wait(awaitable, reason=reason)
        finally:
            self.changed.set()  # the bot edits its message next; the refresh settles that edit first

    async def run(self, preview: Any) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.TICK)
            try:
                now = loop.time()
                await self.env.advance_time(now - last)
                last = now
                if self.changed.is_set():
                    self.changed.clear()
                    shown = self._fingerprint()
                    if shown != self._shown:
                        await preview.refresh()
                        self._shown = shown
            except simcord.SetupError:  # a person's action is settling (and publishes); again next tick
                continue


async def run_playground(
    settings: Settings,
    *,
    port: int | None = None,
    on_ready: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> None:
    settings = await playground_settings(settings)
    services = await open_services(settings, preview_every=2)
    try:
        await scan_models(services.registry, services.networks)
        # Generations take real seconds on the worker: let the simulated Discord wait for them.
        bot = create_bot(services, always_sync=True)
        async with simcord.run(bot, settle_timeout=900) as env:
            channel, you, member = playground_world(env, services)
            live = LivePage(env, channel)
            bot.external_wait = live.external_wait
            async with env.preview(channel, viewers=[you, member], layout="channel", port=port) as preview:
                republishing = asyncio.create_task(live.run(preview))
                on_ready(preview.url)
                try:
                    await (stop or asyncio.Event()).wait()
                finally:
                    republishing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await republishing
    finally:
        await services.close()
