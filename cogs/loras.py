"""/loras list and /loras info: the LoRAs (and textual-inversion embeddings) this bot has, and how to
use them in a prompt."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checkpoints.sidecars import read_preview
from bot.networks.registry import NetworkEntry
from cogs.utils.context import place
from cogs.utils.errors import refuse
from cogs.utils.formatting import CONTENT_MAX, EMBED_COLOUR, FIELD_MAX, clip
from cogs.utils.lora_option import Lora
from cogs.utils.model_previews import send_card

if TYPE_CHECKING:
    from cogs.app import EaselBot

PREVIEW_MAX_BYTES = 4 << 20
BASES = [
    app_commands.Choice(name=label, value=base)
    for base, label in (("sd1", "SD1.x"), ("sd2", "SD2.x"), ("sdxl", "SDXL"))
]


def lora_embed(entry: NetworkEntry) -> discord.Embed:
    embed = discord.Embed(
        title=clip(entry.name, 256), colour=EMBED_COLOUR, description=clip(entry.description, 4096) or None
    )
    uses = {
        "embedding": f"write `{entry.name}` in the prompt or the negative prompt",
        "upscaler": f"/upscale's or /imagine's upscaler option: `{entry.alias or entry.name}`",
    }
    use = uses.get(entry.kind, f"`<lora:{entry.name}:1>` in the prompt, or /imagine's lora option")
    embed.add_field(name="Use", value=clip(use, FIELD_MAX))
    embed.add_field(name="Kind", value=entry.label)
    hashes = f"AutoV2 {entry.autov2.upper()}" + ("" if entry.kind == "upscaler" else f" · A1111 {entry.short_hash}")
    embed.add_field(name="Hashes", value=hashes)
    if entry.trigger_words:
        embed.add_field(name="Trigger words", value=clip(", ".join(entry.trigger_words), FIELD_MAX), inline=False)
    if not entry.loadable:
        embed.add_field(name="Cannot be applied", value=clip(entry.reason, FIELD_MAX), inline=False)
    embed.set_footer(text=f"{entry.display_name} · {entry.status} · {'NSFW' if entry.nsfw else 'SFW'}")
    return embed


def lora_folder(entry: NetworkEntry) -> Path:
    """The LoRA folder the entry lies in: previews are read only from there."""
    return entry.path.parents[len(Path(entry.relative_path).parts) - 1]


@app_commands.allowed_installs(guilds=True, users=True)
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
class Loras(commands.GroupCog, group_name="loras", group_description="The LoRAs this bot has"):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.jobs = bot.services.jobs
        super().__init__()

    @app_commands.command(name="list", description="LoRAs and embeddings you can use here, and their base models")
    @app_commands.describe(base="Only LoRAs for this base model")
    @app_commands.choices(base=BASES)
    async def list(self, interaction: discord.Interaction, base: str | None = None) -> None:
        entries = await self.jobs.loras_shown(place(interaction), base)
        words = await self.jobs.embeddings_shown(place(interaction), base)
        if not entries and not words:
            await refuse(interaction, "no LoRA matches" if base else "no LoRA is installed yet")
            return
        lines = [
            f"`<lora:{e.name}:1>` · {e.label}" + (f" · {', '.join(e.trigger_words[:3])}" if e.trigger_words else "")
            for e in entries
        ]
        if words:
            lines.append("**Embeddings** (write the word in the prompt or the negative prompt):")
            lines += [f"`{e.name}` · {e.label}" for e in words]
        text = "\n".join(lines)
        if len(text) > CONTENT_MAX:
            text = clip(text, CONTENT_MAX - 40) + f"\n… {len(entries)} in all; /loras info NAME"
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="info", description="One LoRA: how to use it, its base model and trigger words")
    async def info(self, interaction: discord.Interaction, name: Lora) -> None:
        entry = await self.jobs.loras.find(name) if self.jobs.loras is not None else None
        if entry is None or entry.name not in {e.name for e in await self.jobs.loras_shown(place(interaction))}:
            await refuse(interaction, f"no LoRA named {name!r} here; /loras list shows them")
            return
        preview = await asyncio.to_thread(read_preview, entry.preview_path, lora_folder(entry), PREVIEW_MAX_BYTES)
        suffix = Path(entry.preview_path or "").suffix.lower()
        await send_card(interaction, self.jobs, lora_embed(entry), preview, suffix, ephemeral=True)


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Loras(bot))
