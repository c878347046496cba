"""Who is asking and where, read off an interaction, in the terms the job rules use (bot/jobs.py)."""

from __future__ import annotations

import discord

from bot.jobs import Asker, Place


def asker(interaction: discord.Interaction) -> Asker:
    services = interaction.client.services  # type: ignore[attr-defined]
    return Asker(
        user_id=str(interaction.user.id),
        name=interaction.user.display_name,
        owner=interaction.user.id in services.settings.owner_ids,
        manages_server=interaction.guild_id is not None and interaction.permissions.manage_guild,
    )


def place(interaction: discord.Interaction) -> Place:
    """A server channel (age-restricted or not), or a DM; DMs count as adult places, as on Discord."""
    if interaction.guild_id is None:
        return Place(adult=True)
    channel = interaction.channel
    adult = bool(channel is not None and getattr(channel, "is_nsfw", lambda: False)())
    return Place(str(interaction.guild_id), str(interaction.channel_id) if interaction.channel_id else None, adult)
