"""The ControlNet options of /control: a model and a preprocessor by autocomplete (the preprocessors
Easel runs are more than Discord's 25 choices); which model a unit runs, and whether it fits, is decided in bot/controlnets/registry.py and the
job rules."""

from __future__ import annotations

import discord
from discord import app_commands

from cogs.utils.formatting import clip
from common.control import CONTROL_MODES, RUNNABLE


class ControlNetName(app_commands.Transformer):
    """A registered ControlNet that runs, by name."""

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        registry = interaction.client.services.controlnets  # type: ignore[attr-defined]
        needle = value.lower().strip()
        entries = [e for e in await registry.list(status="present") if e.loadable and needle in e.name.lower()]
        return [app_commands.Choice(name=clip(f"{e.name} · {e.label}", 100), value=e.name[:100]) for e in entries][:25]


class PreprocessorName(app_commands.Transformer):
    """A preprocessor Easel runs, as the extension names it (the rules refuse any other by name)."""

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        needle = value.lower().strip()
        found = [name for name in RUNNABLE if needle in name]
        found.sort(key=lambda name: not name.startswith(needle))  # what begins with the typed text first
        return [app_commands.Choice(name=name, value=name) for name in found][:25]


ControlNet = app_commands.Transform[str, ControlNetName]
Preprocessor = app_commands.Transform[str, PreprocessorName]
MODES = [app_commands.Choice(name=mode, value=mode) for mode in CONTROL_MODES]
