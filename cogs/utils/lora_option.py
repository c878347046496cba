"""The LoRA option of /imagine and /loras info: one autocomplete; every rule about using it is in bot/."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.networks.registry import NetworkEntry
from cogs.utils.context import place
from cogs.utils.formatting import clip


def lora_choices(entries: list[NetworkEntry], current: str) -> list[app_commands.Choice[str]]:
    """Names starting with what was typed first, then names, titles or trigger words holding it."""
    needle = current.lower().strip()
    scored = []
    for entry in entries:
        haystack = f"{entry.name} {entry.alias} {entry.display_name} {' '.join(entry.trigger_words)}".lower()
        if not needle or needle in haystack:
            scored.append((0 if entry.name.lower().startswith(needle) else 1, entry.name.lower(), entry))
    scored.sort(key=lambda item: item[:2])
    return [app_commands.Choice(name=clip(f"{e.name} · {e.label}", 100), value=e.name[:100]) for _, _, e in scored[:25]]


class ShownLora(app_commands.Transformer):
    """A LoRA shown where the command runs; with a checkpoint already chosen, only LoRAs for its base."""

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        return value.strip()

    async def autocomplete(self, interaction: discord.Interaction, value: str) -> list[app_commands.Choice[str]]:
        services = interaction.client.services  # type: ignore[attr-defined]
        base = None
        chosen = getattr(interaction.namespace, "checkpoint", None)
        if chosen:
            entry = await services.registry.find(str(chosen))
            base = entry.family if entry is not None else None
        return lora_choices(await services.jobs.loras_shown(place(interaction), base), value)


Lora = app_commands.Transform[str, ShownLora]
