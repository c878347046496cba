"""/checkpoints list and info, and "Use this": browse what is installed and start a picture with it.

Searching by meaning ("which checkpoint for anime?") is the catalog issue's; this cog shows the
registry as it is. NSFW-flagged checkpoints are listed only in age-restricted channels and DMs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checkpoints.registry import CheckpointEntry
from bot.errors import EaselError
from bot.generation.checkpoint_ref import CheckpointRef
from cogs.formatting import EMBED_COLOUR, FIELD_MAX, clip, nsfw_allowed
from cogs.generation import refuse

if TYPE_CHECKING:
    from cogs.app import EaselBot

PAGE = 10
FAMILIES = {"SD 1.x": "sd1", "SD 2.x": "sd2", "SDXL": "sdxl"}


def info_embed(entry: CheckpointEntry) -> discord.Embed:
    embed = discord.Embed(
        title=clip(entry.name, 256), colour=EMBED_COLOUR, description=clip(entry.description, 4096) or None
    )
    embed.add_field(name="Architecture", value=entry.architecture)
    embed.add_field(name="AutoV2", value=entry.autov2.upper())
    embed.add_field(name="Format", value=f"{entry.format} · {entry.file_size / 1e9:.2f} GB")
    if entry.training:
        embed.add_field(name="Training", value=entry.training)
    if entry.tags:
        embed.add_field(name="Tags", value=clip(", ".join(entry.tags), FIELD_MAX))
    words = (entry.sidecars.get("civitai") or {}).get("trained_words") or []
    if words:
        embed.add_field(name="Trigger words", value=clip(", ".join(words), FIELD_MAX))
    if entry.lineage:
        parents = "\n".join(f"{p['role']}: {p['name'] or '?'} ({p['autov2'].upper()})" for p in entry.lineage)
        embed.add_field(name="Merged from", value=clip(parents, FIELD_MAX), inline=False)
    if not entry.runnable:
        embed.add_field(
            name="Cannot be run", value=clip(entry.inspection.get("architecture_info", {}).get("reason", ""), FIELD_MAX)
        )
    embed.set_footer(text=f"{entry.status} · {'NSFW' if entry.nsfw else 'SFW'}")
    return embed


class Catalog(commands.GroupCog, group_name="checkpoints", group_description="The checkpoints this bot has"):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.registry = bot.services.registry
        super().__init__()

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(UseButton)

    async def visible(self, interaction: discord.Interaction, family: str | None = None) -> list[CheckpointEntry]:
        allow_nsfw = nsfw_allowed(interaction)
        return [
            e
            for e in await self.registry.list(status="present")
            if (allow_nsfw or not e.nsfw) and (family is None or e.family == family)
        ]

    @app_commands.command(name="list", description="The checkpoints installed here")
    @app_commands.describe(base="Only this base model")
    @app_commands.choices(base=[app_commands.Choice(name=k, value=v) for k, v in FAMILIES.items()])
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def list_(self, interaction: discord.Interaction, base: str | None = None) -> None:
        entries = await self.visible(interaction, base)
        if not entries:
            await refuse(interaction, "no checkpoint matches" if base else "no checkpoint is installed yet")
            return
        view = CatalogPages(entries, interaction.user.id)
        await interaction.response.send_message(embed=view.embed(), view=view)

    @app_commands.command(name="info", description="Everything known about one checkpoint")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        entry = await self.registry.find(name)
        if entry is None or entry not in await self.visible(interaction):
            await refuse(interaction, f"no checkpoint named {name!r} here; /checkpoints list shows them")
            return
        view = (
            discord.ui.View(timeout=None).add_item(UseButton(entry.name)) if entry.runnable else discord.utils.MISSING
        )
        await interaction.response.send_message(embed=info_embed(entry), view=view)

    @info.autocomplete("name")
    async def names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        needle = current.lower()
        entries = [e for e in await self.visible(interaction) if needle in e.name.lower()]
        return [
            app_commands.Choice(name=clip(f"{e.name} · {e.architecture}", 100), value=e.name[:100])
            for e in entries[:25]
        ]


class CatalogPages(discord.ui.View):
    """Pages of ten, and a picker that opens one checkpoint's card."""

    def __init__(self, entries: list[CheckpointEntry], owner: int) -> None:
        super().__init__(timeout=600)
        self.entries = entries
        self.owner = owner
        self.page = 0
        self.refresh()

    @property
    def pages(self) -> int:
        return (len(self.entries) + PAGE - 1) // PAGE

    def shown(self) -> list[CheckpointEntry]:
        return self.entries[self.page * PAGE : (self.page + 1) * PAGE]

    def embed(self) -> discord.Embed:
        lines = [
            f"**{e.name}** · {e.architecture} · `{e.autov2.upper()}`" + (" · not runnable" if not e.runnable else "")
            for e in self.shown()
        ]
        embed = discord.Embed(title="Checkpoints", description="\n".join(lines), colour=EMBED_COLOUR)
        embed.set_footer(text=f"page {self.page + 1} of {self.pages} · {len(self.entries)} in all")
        return embed

    def refresh(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= self.pages - 1
        self.pick.options = [
            discord.SelectOption(label=clip(e.name, 100), description=clip(e.architecture, 100), value=e.name[:100])
            for e in self.shown()
        ]

    async def turn(self, interaction: discord.Interaction, step: int) -> None:
        self.page = max(0, min(self.pages - 1, self.page + step))
        self.refresh()
        await interaction.response.edit_message(embed=self.embed(), view=self)

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self.turn(interaction, -1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self.turn(interaction, +1)

    @discord.ui.select(placeholder="Open a checkpoint…", options=[discord.SelectOption(label="-")])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        entry = next(e for e in self.entries if e.name == select.values[0])
        view = (
            discord.ui.View(timeout=None).add_item(UseButton(entry.name)) if entry.runnable else discord.utils.MISSING
        )
        await interaction.response.send_message(embed=info_embed(entry), view=view, ephemeral=True)


class UseButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:use:(?P<name>[a-z0-9._-]{1,80})"):
    """Start a picture with this checkpoint: asks for the prompt, then runs like /imagine."""

    def __init__(self, name: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Use this", emoji="🎨", style=discord.ButtonStyle.primary, custom_id=f"easel:use:{name}"
            )
        )
        self.name = name

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> UseButton:
        return cls(match["name"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(PromptModal(self.name))


class PromptModal(discord.ui.Modal, title="Imagine"):
    prompt = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=1500, custom_id="prompt"
    )
    negative = discord.ui.TextInput(label="Negative prompt", required=False, max_length=1000, custom_id="negative")

    def __init__(self, checkpoint: str) -> None:
        super().__init__(timeout=None)
        self.checkpoint = checkpoint

    async def on_submit(self, interaction: discord.Interaction) -> None:
        from cogs.generation import Generation

        cog = interaction.client.get_cog("Generation")
        assert isinstance(cog, Generation)
        await interaction.response.defer(thinking=True)
        entry = await cog.services.registry.find(self.checkpoint)
        if entry is None:
            await refuse(interaction, f"{self.checkpoint} is not installed any more")
            return
        try:
            handle = await cog.submit(
                interaction, CheckpointRef.from_entry(entry), prompt=str(self.prompt), negative=str(self.negative)
            )
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await cog.follow(interaction, handle)


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Catalog(bot))
