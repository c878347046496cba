"""/settings: members with Manage Server set their server's (or one channel's) defaults and policy.

Defaults (checkpoint, steps, CFG, sampler, aspect, negative prompt) apply where /imagine leaves an
option out; policy (NSFW, spoilers, limits, blocked words) is server-wide; hidden checkpoints are
not offered anywhere in the server. Everyone else gets a private refusal and nothing changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.aspects import ASPECTS
from bot.guilds.settings import MAX_IMAGES, MAX_STEPS, NSFW_POLICIES, Effective
from bot.rules.limits import MAX_CFG
from bot.rules.policy import ADULT_PICTURE_ACTIONS, PICTURE_ACTIONS
from bot.styles import MAX_NAME_CHARS, MAX_TEXT_CHARS, StyleBook, checked
from cogs.utils.checkpoint_option import EditModel, Registered
from cogs.utils.checks import is_manager, manager_group
from cogs.utils.formatting import EMBED_COLOUR, FIELD_MAX, clip
from common.parameters import RNG_SOURCES
from common.samplers import SAMPLERS

if TYPE_CHECKING:
    from cogs.app import EaselBot

MANAGERS_ONLY = "only members who can manage this server can change its settings"
LISTED_STYLES = 15


@manager_group
class ServerSettings(
    commands.GroupCog, group_name="settings", group_description="This server's defaults and rules (Manage Server)"
):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.store = bot.services.guild_settings
        self.book = bot.services.jobs.styles or StyleBook(bot.services.db)
        super().__init__()

    async def show_embed(self, interaction: discord.Interaction, effective: Effective, title: str) -> discord.Embed:
        embed = discord.Embed(title=title, colour=EMBED_COLOUR)
        for key, value, source in await self.store.describe(effective):
            embed.add_field(name=key.replace("_", " "), value=clip(f"{value} · {source}", FIELD_MAX))
        embed.set_footer(text=f"for #{getattr(interaction.channel, 'name', 'this channel')} · channel > server > bot")
        return embed

    async def apply(self, interaction: discord.Interaction, changes: dict[str, Any], this_channel: bool) -> None:
        changes = {k: v for k, v in changes.items() if v is not None}
        await self.store.update(
            str(interaction.guild_id),
            str(interaction.channel_id) if this_channel else None,
            changes,
            by=str(interaction.user.id),
        )
        effective = await self.store.effective(str(interaction.guild_id), str(interaction.channel_id))
        scope = "this channel" if this_channel else "the server"
        embed = await self.show_embed(interaction, effective, f"Saved for {scope}")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @is_manager(MANAGERS_ONLY)
    @app_commands.command(name="show", description="The settings that apply in this channel, and where each comes from")
    async def show(self, interaction: discord.Interaction) -> None:
        effective = await self.store.effective(str(interaction.guild_id), str(interaction.channel_id))
        embed = await self.show_embed(interaction, effective, "Settings here")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @is_manager(MANAGERS_ONLY)
    @app_commands.command(name="defaults", description='Defaults for /imagine in this server or channel ("-" clears)')
    @app_commands.describe(
        checkpoint="Default checkpoint",
        steps=f"Default steps (1-{MAX_STEPS})",
        cfg="Default CFG scale (0-30)",
        sampler="Default sampler",
        aspect="Default shape",
        negative='Default negative prompt ("-" clears)',
        rng="Where the starting noise comes from, as A1111's RNG source (GPU: A1111's default)",
        edit_checkpoint="Default edit model for /edit and the Edit button (e.g. FLUX.1 Kontext)",
        this_channel="Only in this channel (default: the whole server)",
    )
    @app_commands.choices(
        sampler=[app_commands.Choice(name=s, value=s) for s in SAMPLERS],
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        rng=[app_commands.Choice(name=s, value=s) for s in RNG_SOURCES],
    )
    async def defaults(
        self,
        interaction: discord.Interaction,
        checkpoint: Registered | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        sampler: str | None = None,
        aspect: str | None = None,
        negative: app_commands.Range[str, 0, 1000] | None = None,
        rng: str | None = None,
        edit_checkpoint: EditModel | None = None,
        this_channel: bool = False,
    ) -> None:
        changes = {"checkpoint": checkpoint, "steps": steps, "cfg": cfg, "sampler": sampler, "aspect": aspect}
        others = {"negative": negative, "rng": rng, "edit_checkpoint": edit_checkpoint}
        await self.apply(interaction, changes | others, this_channel)

    @is_manager(MANAGERS_ONLY)
    @app_commands.command(name="policy", description="NSFW, spoilers, limits and blocked words for the whole server")
    @app_commands.describe(
        nsfw="Where NSFW checkpoints may be used",
        spoiler="Post every picture behind a spoiler",
        max_steps=f"Most steps a member may ask for (1-{MAX_STEPS})",
        max_images=f"Most pictures per request (1-{MAX_IMAGES})",
        blocked_words='Comma-separated words refused in prompts here ("-" clears)',
        nsfw_pictures="Pictures the picture check finds nudity in, in ordinary channels",
        nsfw_pictures_adult="The same in age-restricted channels",
        nsfw_threshold="How sure the check must be (0-1, default 0.5; lower catches more)",
        this_channel="The picture-check settings for this channel only (the others are server-wide)",
    )
    @app_commands.choices(
        nsfw=[app_commands.Choice(name=p, value=p) for p in NSFW_POLICIES],
        nsfw_pictures=[app_commands.Choice(name=p, value=p) for p in PICTURE_ACTIONS],
        nsfw_pictures_adult=[app_commands.Choice(name=p, value=p) for p in ADULT_PICTURE_ACTIONS],
    )
    async def policy(
        self,
        interaction: discord.Interaction,
        nsfw: str | None = None,
        spoiler: bool | None = None,
        max_steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        max_images: app_commands.Range[int, 1, MAX_IMAGES] | None = None,
        blocked_words: str | None = None,
        nsfw_pictures: str | None = None,
        nsfw_pictures_adult: str | None = None,
        nsfw_threshold: app_commands.Range[float, 0.0, 1.0] | None = None,
        this_channel: bool = False,
    ) -> None:
        changes = {"nsfw": nsfw, "spoiler": spoiler, "max_steps": max_steps, "max_images": max_images}
        pictures = {
            "nsfw_pictures": nsfw_pictures,
            "nsfw_pictures_adult": nsfw_pictures_adult,
            "nsfw_threshold": nsfw_threshold,
        }
        await self.apply(interaction, changes | {"blocked_words": blocked_words} | pictures, this_channel)

    @is_manager(MANAGERS_ONLY)
    @app_commands.command(name="hide", description="Stop offering a checkpoint in this server")
    async def hide(self, interaction: discord.Interaction, checkpoint: Registered) -> None:
        await self.set_hidden(interaction, checkpoint, True)

    @is_manager(MANAGERS_ONLY)
    @app_commands.command(name="unhide", description="Offer a hidden checkpoint in this server again")
    async def unhide(self, interaction: discord.Interaction, checkpoint: Registered) -> None:
        await self.set_hidden(interaction, checkpoint, False)

    async def set_hidden(self, interaction: discord.Interaction, checkpoint: str, hidden: bool) -> None:
        entry = await self.store.hide(str(interaction.guild_id), checkpoint, hidden)
        verb = "is no longer offered" if hidden else "is offered again"
        await interaction.response.send_message(f"**{entry.name}** {verb} in this server.", ephemeral=True)

    styles = app_commands.Group(name="styles", description="This server's prompt styles (A1111's styles)")

    @styles.command(name="add", description="Add or replace a style: {prompt} marks where the person's prompt goes")
    @app_commands.describe(
        name="The style's name, as /imagine's style option offers it",
        prompt="Its prompt: with {prompt} the person's prompt goes there, else it is added after",
        negative="Its negative prompt, merged the same way",
    )
    @is_manager(MANAGERS_ONLY)
    async def styles_add(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS],
        prompt: app_commands.Range[str, 0, MAX_TEXT_CHARS] = "",
        negative: app_commands.Range[str, 0, MAX_TEXT_CHARS] = "",
    ) -> None:
        style = checked(name, prompt, negative)
        await self.book.add(str(interaction.guild_id), [style])
        await interaction.response.send_message(f"Saved style **{style.name}** for this server.", ephemeral=True)

    @styles.command(name="remove", description="Forget one of this server's styles")
    @is_manager(MANAGERS_ONLY)
    async def styles_remove(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, MAX_NAME_CHARS]) -> None:
        await self.book.remove(str(interaction.guild_id), name)
        await interaction.response.send_message(f"Removed style **{name.strip()}**.", ephemeral=True)

    @styles.command(name="list", description="The styles /imagine offers here: this server's, then the bot's")
    @is_manager(MANAGERS_ONLY)
    async def styles_list(self, interaction: discord.Interaction) -> None:
        guild = str(interaction.guild_id)
        own = {style.name for style in await self.book.list(guild)}
        embed = discord.Embed(title="Styles here", colour=EMBED_COLOUR)
        offered = await self.book.offered(guild)
        for style in offered[:LISTED_STYLES]:  # 15 fields of at most ~370 characters: within 6,000 an embed
            text = style.prompt or "(no prompt)"
            text += f"\nnegative: {style.negative}" if style.negative else ""
            where = "this server" if style.name in own else "the bot"
            embed.add_field(name=clip(f"{style.name} · {where}", 120), value=clip(text, 250), inline=False)
        if len(offered) > LISTED_STYLES:
            embed.set_footer(text=f"and {len(offered) - LISTED_STYLES} more")
        if not offered:
            embed.description = "No styles yet: /settings styles add, or `python bot.py styles import styles.csv` on the host."
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @is_manager(MANAGERS_ONLY)
    @app_commands.command(name="reset", description="Forget this server's (or this channel's) settings")
    async def reset(self, interaction: discord.Interaction, this_channel: bool = False) -> None:
        await self.store.reset(str(interaction.guild_id), str(interaction.channel_id) if this_channel else None)
        scope = "this channel's" if this_channel else "the server's"
        await interaction.response.send_message(f"Forgot {scope} settings.", ephemeral=True)


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(ServerSettings(bot))
