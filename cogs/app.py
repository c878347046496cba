"""The discord.py bot: loads the cogs, syncs the command tree only when it changed."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.services import Services
from cogs.utils.errors import report_error

log = logging.getLogger(__name__)
T = TypeVar("T")

EXTENSIONS = (
    "cogs.generation",
    "cogs.editing",
    "cogs.control",
    "cogs.catalog",
    "cogs.loras",
    "cogs.upscale",
    "cogs.status",
    "cogs.admin",
    "cogs.moderation",
    "cogs.server_settings",
    "cogs.wildcards",
)


class EaselBot(commands.AutoShardedBot):
    """The bot, sharded in this process: `shard_count` None asks Discord how many shards it needs."""

    def __init__(
        self, services: Services, *, dev_guild: int | None = None, always_sync: bool = False, shard_count: int | None = 1
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
            shard_count=shard_count,
        )
        self.services = services
        self.dev_guild = dev_guild
        self.always_sync = always_sync  # a simulated Discord starts empty every time
        # How to await input from outside the bot (the GPU worker). A simulated Discord replaces it
        # with its own external_wait, so its clock can move while a job waits in the queue.
        self.external_wait: Any = None
        self.tree.on_error = self.on_app_command_error

    async def wait_external(self, awaitable: Awaitable[T], reason: str) -> T:
        if self.external_wait is None:
            return await awaitable
        return await self.external_wait(awaitable, reason=reason)

    async def setup_hook(self) -> None:
        if self.services.catalog.embedder is not None:
            self.services.catalog.embedder.start()  # the model loads in its own process while we connect
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_if_changed()
        # Everything loaded so far (modules, classes, the services) lives as long as the process. A
        # full garbage collection walks every tracked object and stops the event loop meanwhile
        # (~90 ms with this bot loaded, measured by bench/event_loop_stall.py); frozen objects are
        # not walked again, so collections only cost what was created since.
        gc.collect()
        gc.freeze()

    async def close(self) -> None:
        gc.unfreeze()  # what was frozen may be garbage once the bot is gone (a test, a restart in-process)
        await super().close()

    async def sync_if_changed(self) -> None:
        """Sync only when the command set differs from the last sync (Discord rate-limits syncs)."""
        payload = json.dumps([c.to_dict(self.tree) for c in self.tree.get_commands()], sort_keys=True, default=str)
        digest = hashlib.sha256(payload.encode()).hexdigest()
        stamp = self.services.settings.data_dir / "command-tree.sha256"
        if not self.always_sync and stamp.exists() and stamp.read_text().strip() == digest:
            log.info("command tree unchanged; not syncing")
            return
        guild = discord.Object(self.dev_guild) if self.dev_guild else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        log.info("command tree synced (%s)", "dev guild" if guild else "global")

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Users get one short line; operators get the traceback in the log."""
        command = interaction.command.qualified_name if interaction.command else "a command"
        await report_error(interaction, error, where=f"/{command}")


def create_bot(
    services: Services, *, dev_guild: int | None = None, always_sync: bool = False, shard_count: int | None = 1
) -> EaselBot:
    return EaselBot(services, dev_guild=dev_guild, always_sync=always_sync, shard_count=shard_count)
