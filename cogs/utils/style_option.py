"""/imagine's style option: one or more style names, comma-separated (bot/styles.py); the
autocomplete completes the last name from the styles this server (and the bot) offers."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.styles import parse_names


class StyleNames(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: str) -> tuple[str, ...]:
        return tuple(parse_names(value))

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        book = interaction.client.services.jobs.styles  # type: ignore[attr-defined]
        if book is None:
            return []
        *chosen, typing = value.split(",") if value else [""]
        guild = str(interaction.guild_id) if interaction.guild_id else None
        offered = [style.name for style in await book.offered(guild)]
        canonical = {name.lower(): name for name in offered}
        before = [canonical.get(name.strip().lower(), name.strip()) for name in chosen if name.strip()]
        needle = typing.strip().lower()
        names = [name for name in offered if needle in name.lower() and name not in before]
        choices = [", ".join([*before, name]) for name in names]
        return [app_commands.Choice(name=text, value=text) for text in choices if len(text) <= 100][:25]


Styles = app_commands.Transform[tuple[str, ...], StyleNames]
