"""A model's card with the preview picture shipped beside its file: a picture like any other, shown
only as the place's picture rule allows (bot/jobs.py decides, after the picture check)."""

from __future__ import annotations

import io
from typing import Any

import discord

from bot.jobs import Jobs
from cogs.utils.context import place


async def send_card(
    interaction: discord.Interaction,
    jobs: Jobs,
    embed: discord.Embed,
    preview: bytes | None,
    suffix: str,
    *,
    view: discord.ui.View | Any = discord.utils.MISSING,
    ephemeral: bool = False,
) -> None:
    files: list[discord.File] = []
    if preview is not None:
        here = place(interaction)
        if await jobs.checks_pictures(here):  # scoring may take a few seconds: answer Discord first
            await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        verdict = await jobs.model_preview_verdict(here, preview)
        name = "preview" + suffix
        if verdict == "withhold":
            embed.add_field(name="Preview", value="Not shown here: withheld by the picture check.", inline=False)
        elif verdict == "spoiler":  # an attachment used inside an embed would show uncovered
            files.append(discord.File(io.BytesIO(preview), filename=name, spoiler=True))
        else:
            files.append(discord.File(io.BytesIO(preview), filename=name))
            embed.set_thumbnail(url=f"attachment://{name}")
    if interaction.response.is_done():
        await interaction.followup.send(embed=embed, files=files, view=view, ephemeral=ephemeral)
    else:
        await interaction.response.send_message(embed=embed, files=files, view=view, ephemeral=ephemeral)
