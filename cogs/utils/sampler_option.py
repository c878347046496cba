"""/imagine's sampler option: A1111's sampler names, and each with a schedule type written after it
("DPM++ 2M SGM Uniform", as A1111 before 1.9 named them), so every schedule is one option away.
Which text is valid is decided in common/samplers.py `parse_sampler`."""

from __future__ import annotations

import discord
from discord import app_commands

from common.samplers import sampler_labels


class SamplerName(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        words = value.lower().split()
        found = [label for label in sampler_labels() if all(word in label.lower() for word in words)]
        return [app_commands.Choice(name=label, value=label) for label in found[:25]]


Sampler = app_commands.Transform[str, SamplerName]
