"""The checkpoint option of every command: one autocomplete, and the name handed on as typed.

Resolution (by name, display name or hash) and every rule about using it happen once, in the
services (bot/jobs.py for jobs, the registry for owners' commands), not here.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.checkpoints.registry import CheckpointEntry
from cogs.utils.context import place
from cogs.utils.formatting import clip
from common.editing import edit_model


def checkpoint_choices(entries: list[CheckpointEntry], current: str) -> list[app_commands.Choice[str]]:
    """Names starting with what was typed first, then names or tags holding it, then every word of it."""
    needle = current.lower().strip()
    scored = []
    for entry in entries:
        haystack = f"{entry.name} {entry.display_name} {' '.join(entry.tags)}".lower()
        if not needle or needle in haystack:
            scored.append((0 if entry.name.startswith(needle) else 1, entry.name, entry))
        elif all(part in haystack for part in needle.split()):
            scored.append((2, entry.name, entry))
    scored.sort(key=lambda item: item[:2])
    return [
        app_commands.Choice(name=clip(f"{e.name} · {e.architecture}", 100), value=e.name[:100])
        for _, _, e in scored[:25]
    ]


class OfferedCheckpoint(app_commands.Transformer):
    """A checkpoint that can be used where the command is run: runnable, not hidden, NSFW only where allowed."""

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        services = interaction.client.services  # type: ignore[attr-defined]
        return checkpoint_choices(await services.jobs.offered(place(interaction)), value)


class EditCheckpoint(OfferedCheckpoint):
    """A checkpoint offered here that can edit pictures (common/editing.py)."""

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        services = interaction.client.services  # type: ignore[attr-defined]
        offered = await services.jobs.offered(place(interaction))
        return checkpoint_choices([e for e in offered if edit_model(e.family, e.variant) is not None], value)


class RegisteredCheckpoint(app_commands.Transformer):
    """Any registered checkpoint that is present on disk (owners' and managers' commands)."""

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        services = interaction.client.services  # type: ignore[attr-defined]
        return checkpoint_choices(await services.registry.list(status="present"), value)


Offered = app_commands.Transform[str, OfferedCheckpoint]
Registered = app_commands.Transform[str, RegisteredCheckpoint]
EditModel = app_commands.Transform[str, EditCheckpoint]
