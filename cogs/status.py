"""/status: workers, what they hold, the queue and recent speed."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.worker_status import describe
from cogs.utils.formatting import EMBED_COLOUR, FIELD_MAX, clip

if TYPE_CHECKING:
    from cogs.app import EaselBot

MAX_SHARD_LINES = 16  # a field's 1,024 characters hold that many

class Status(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot

    @app_commands.command(name="status", description="Workers, loaded checkpoints, queue and speed")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def status(self, interaction: discord.Interaction) -> None:
        status = self.bot.services.generation.status()
        embed = discord.Embed(title="Easel status", colour=EMBED_COLOUR)
        for worker in status.workers[:20]:
            title, body = describe(worker)
            embed.add_field(name=clip(title, 256), value=clip(body, FIELD_MAX), inline=False)
        if status.broker:
            embed.add_field(name="Remote workers' broker", value=clip(status.broker, FIELD_MAX), inline=False)
        embed.add_field(name="Queue", value=f"{status.queued} waiting, {status.running} running")
        if status.seconds_per_unit:
            # In the workers' unit (it/s), scaled to one 512×512 picture: what the waiting times are computed from.
            rate = 1 / status.seconds_per_unit
            embed.add_field(name="Recent speed", value=f"{rate:.2f} it/s for one 512×512 picture")
        embed.add_field(
            name="Catalog search by meaning", value=clip(self.bot.services.catalog.semantic_state(), FIELD_MAX)
        )
        embed.add_field(name="Shards", value=clip(shard_lines(self.bot, interaction.guild), FIELD_MAX), inline=False)
        if interaction.user.id in self.bot.services.settings.owner_ids:  # owners see what the picture check did
            counts = await self.bot.services.generation.store.safety_counts()
            embed.add_field(
                name="Picture check", value=f"{counts['withhold']} withheld, {counts['spoiler']} behind a spoiler"
            )
        await interaction.response.send_message(embed=embed, ephemeral=True)


def shard_lines(bot: EaselBot, here: discord.Guild | None) -> str:
    """Each gateway shard: its servers, its heartbeat latency, and whether it is connected; the one
    this server is on marked."""
    servers: dict[int, int] = {}
    for guild in bot.guilds:
        servers[guild.shard_id] = servers.get(guild.shard_id, 0) + 1
    lines = []
    for shard_id, shard in sorted(bot.shards.items())[:MAX_SHARD_LINES]:
        latency = f"{shard.latency * 1000:.0f} ms" if math.isfinite(shard.latency) else "no heartbeat yet"
        state = "disconnected" if shard.is_closed() else latency
        mark = " (this server)" if here is not None and here.shard_id == shard_id else ""
        lines.append(f"#{shard_id}{mark}: {servers.get(shard_id, 0)} servers, {state}")
    if len(bot.shards) > MAX_SHARD_LINES:
        lines.append(f"… and {len(bot.shards) - MAX_SHARD_LINES} more")
    return "\n".join(lines) or "none connected"


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Status(bot))
