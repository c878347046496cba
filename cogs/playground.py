"""The playground: the real bot, services and worker against simcord's in-process Discord, shown
as a Discord-like page in your browser. No token, no account. `python bot.py` without a token."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import discord
import simcord

from bot.config import Settings
from bot.model_files import scan_models
from bot.services import Services, open_services
from cogs.app import create_bot

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]


async def playground_settings(settings: Settings) -> Settings:
    """The user's models when a runnable one is there; otherwise a tiny demo model of our own, in a
    world of its own (its own data folder and database): the demo's folder and the real models folder
    never share a registry, so neither marks the other's checkpoints missing."""
    root = settings.models_dir.expanduser()
    if root.is_dir() and any(p.suffix in (".safetensors", ".ckpt") for p in root.rglob("*")):
        return settings
    demo_data = settings.data_dir / "playground"
    demo_dir = demo_data / "models"
    demo = demo_dir / "easel-demo-tiny-sd1.safetensors"
    if not demo.exists():
        demo_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "gpu_worker", "make-tiny-checkpoint", "--arch", "sd1", str(demo)]
        await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True, cwd=REPO_ROOT)
    log.info("no checkpoints in %s: the playground uses a tiny demo model (random weights: noise, not art)", root)
    return settings.model_copy(update={"models_dir": demo_dir, "data_dir": demo_data})


def playground_world(env: simcord.Env, services: Services) -> tuple[simcord.ChannelHandle, simcord.MemberActor]:
    """The playground's server: one channel, and you, who run the server and own the bot, so that
    /settings, /queue and /admin are all yours to try."""
    guild = env.create_guild()
    channel = guild.create_text_channel("imagine")
    managers = guild.create_role("Managers", permissions=discord.Permissions(manage_guild=True))
    you = guild.add_member(env.create_user("you"), roles=[managers])
    services.settings.owner_ids.append(you.id)
    return channel, you


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
            channel, you = playground_world(env, services)
            async with env.preview(channel, viewers=[you], layout="channel", port=port) as preview:
                on_ready(preview.url)
                await (stop or asyncio.Event()).wait()
    finally:
        await services.close()
