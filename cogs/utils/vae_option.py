"""The VAE option of /imagine and /admin edit: one autocomplete; which VAE fits is decided in
bot/components/registry.py."""

from __future__ import annotations

import discord
from discord import app_commands

from cogs.utils.formatting import clip


class VaeName(app_commands.Transformer):
    """A registered VAE, or "none" for the checkpoint's own."""

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        registry = interaction.client.services.vaes  # type: ignore[attr-defined]
        needle = value.lower().strip()
        entries = [e for e in await registry.list(status="present") if needle in e.name.lower()]
        choices = [app_commands.Choice(name="none (the checkpoint's own)", value="none")]
        choices += [app_commands.Choice(name=clip(f"{e.name} · {e.label}", 100), value=e.name[:100]) for e in entries]
        return choices[:25]


Vae = app_commands.Transform[str, VaeName]
