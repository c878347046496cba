"""/wildcards list [name]: the wildcard files a prompt can name as `__name__` (bot/wildcards.py),
or one file's lines, shown only to the person asking."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.utils.formatting import EMBED_COLOUR, clip

if TYPE_CHECKING:
    from cogs.app import EaselBot

LISTED = 40
DESCRIPTION_MAX = 3800  # an embed description holds 4,096 characters


class Wildcards(commands.GroupCog, group_name="wildcards", group_description="Wildcards for __name__ in a prompt"):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list", description="The wildcards a prompt can name as __name__, or one wildcard's choices")
    @app_commands.describe(name="A wildcard's name (e.g. animals or colors/warm): its choices")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def list_(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 200] | None = None) -> None:
        library = self.bot.services.jobs.wildcards
        found = await asyncio.to_thread(library.current) if library is not None else None
        embed = discord.Embed(colour=EMBED_COLOUR)
        if found is None or not (found.values or found.refused):
            embed.title, embed.description = "No wildcards", "The host has put no wildcard files in its wildcard folders."
        elif name is None:
            embed.title = f"Wildcards ({len(found.values)})"
            shown = [f"`__{n}__` · {len(v)} choice(s)" for n, v in sorted(found.values.items())[:LISTED]]
            shown += [f"`__{n}__` · refused: {why}" for n, why in sorted(found.refused.items())[:10]]
            more = len(found.values) - LISTED
            embed.description = clip("\n".join(shown) + (f"\n… and {more} more" if more > 0 else ""), DESCRIPTION_MAX)
            embed.set_footer(text="{red|blue} picks one, {2$$a|b|c} two, __name__ a line of name.txt")
        elif name in found.values:
            lines = found.values[name]
            embed.title = clip(f"__{name}__ · {len(lines)} choice(s)", 256)
            embed.description = clip("\n".join(f"• {line}" for line in lines[:LISTED]), DESCRIPTION_MAX)
        else:
            why = found.refused.get(name)
            embed.title = clip(f"__{name}__", 256)
            embed.description = f"Not offered: {why}" if why else "No wildcard of that name; /wildcards list shows them."
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @list_.autocomplete("name")
    async def _names(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        library = self.bot.services.jobs.wildcards
        if library is None:
            return []
        found = await asyncio.to_thread(library.current)
        needle = value.lower().strip()
        return [app_commands.Choice(name=n[:100], value=n[:100]) for n in sorted(found.values) if needle in n.lower()][:25]


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Wildcards(bot))
