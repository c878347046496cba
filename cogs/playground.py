"""The playground: the real bot, services and worker against simcord's in-process Discord, shown
as a Discord-like page in your browser. No token, no account. `python bot.py` without a token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import discord
import simcord
from discord.ext import commands

from bot.config import Settings
from bot.demo import install_demo
from bot.model_files import scan_models
from bot.services import Services, open_services
from cogs.app import create_bot

log = logging.getLogger(__name__)


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
    wall clock, and a message the bot posts, edits or deletes republishes the page (`Preview.refresh`),
    which the page polls. The cue is Discord's own message events (simulated gateway), which come
    after the change, not the end of the bot's wait on the worker: the bot posts the finished
    picture some awaits after that, and a look taken at the wait's end could miss the post for good
    (the page then showed the job running forever). Only a real change republishes: a click is
    refused as stale when the page was republished since the browser last read it."""

    TICK = 0.25  # seconds between clock moves

    def __init__(self, env: simcord.Env, channel: simcord.ChannelHandle) -> None:
        self.env = env
        self.channel = channel
        self.changed = asyncio.Event()
        self.turn = asyncio.Lock()  # simcord's operations, ours and a person's actions, one at a time
        self._shown: tuple = ()

    def _fingerprint(self) -> tuple:
        """What the page shows of the channel's latest messages."""
        return tuple(
            (m.id, m.content, m.edited_at, len(m.attachments), len(m.embeds), len(m.components))
            for m in self.channel.history()[-20:]
        )

    def follow(self, bot: commands.Bot) -> None:
        """Look at the channel whenever Discord tells the bot a message changed."""

        async def changed(*_: object) -> None:
            self.changed.set()

        for event in ("on_message", "on_raw_message_edit", "on_raw_message_delete"):
            bot.add_listener(changed, event)

    def take_turns(self, preview: Any) -> None:
        """A person's action waits while the clock is moved or the page republished, and the other way
        round. simcord runs one operation at a time and answers an action that overlaps another with
        HTTP 400, which the page takes as "Action outcome uncertain. It will not be retried": the
        command was lost (on a loaded machine, where moving the clock takes longer, one in a few runs).
        simcord 3.2 has no public way to queue an action behind an operation, so its entry point for
        the page's actions is wrapped here."""
        act = preview._action

        async def one_at_a_time(context_id: str | None, body: Any) -> Any:
            async with self.turn:
                return await act(context_id, body)

        preview._action = one_at_a_time

    async def run(self, preview: Any) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        unseen = False  # a change not yet looked at (simcord was busy when it came)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self.TICK)
            unseen |= self.changed.is_set()
            self.changed.clear()
            async with self.turn:
                try:
                    now = loop.time()
                    await self.env.advance_time(now - last)
                    last = now
                    if unseen:
                        shown = self._fingerprint()
                        if shown != self._shown:
                            await preview.refresh()
                            self._shown = shown
                        unseen = False
                except simcord.SetupError:  # simcord was busy with work of its own: again at the next tick
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
            bot.external_wait = env.external_wait
            live.follow(bot)
            async with env.preview(channel, viewers=[you, member], layout="channel", port=port) as preview:
                live.take_turns(preview)
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
