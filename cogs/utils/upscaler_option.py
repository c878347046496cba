"""The upscaler options of /upscale and /imagine's hires fix: one autocomplete each; which names are
valid is decided in bot/upscalers/registry.py."""

from __future__ import annotations

import discord
from discord import app_commands

from cogs.utils.formatting import clip


class _UpscalerName(app_commands.Transformer):
    latent = True

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        registry = interaction.client.services.upscalers  # type: ignore[attr-defined]
        needle = value.lower().strip()
        names = [n for n in await registry.choices(latent=self.latent) if needle in n.lower()]
        return [app_commands.Choice(name=clip(n, 100), value=n[:100]) for n in names[:25]]


class PictureUpscalerName(_UpscalerName):
    """For a finished picture: installed models, Lanczos, Nearest."""

    latent = False


class HiresUpscalerName(_UpscalerName):
    """For the hires fix: A1111's latent modes too."""


PictureUpscaler = app_commands.Transform[str, PictureUpscalerName]
HiresUpscaler = app_commands.Transform[str, HiresUpscalerName]
