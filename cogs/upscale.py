"""/upscale: a picture enlarged on its own, as A1111's Extras tab does it. The rules are in bot/jobs.py
(`Jobs.upscale`), the work in bot/upscalers/service.py."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.upscalers.service import MAX_SCALE
from cogs.utils.attachments import fit_image, read_attachment
from cogs.utils.context import asker, place
from cogs.utils.job_messages import tell_withheld
from cogs.utils.upscaler_option import PictureUpscaler

if TYPE_CHECKING:
    from cogs.app import EaselBot


class Upscale(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.jobs = bot.services.jobs

    @app_commands.command(name="upscale", description="Enlarge a picture with an upscaler model (A1111's Extras)")
    @app_commands.describe(
        image="A PNG, JPEG or WebP; its A1111 parameters are kept",
        upscaler="An installed upscaler model (ESRGAN, Real-ESRGAN…), Lanczos or Nearest",
        scale="Each side times this",
    )
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def upscale(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        upscaler: PictureUpscaler = "Lanczos",
        scale: app_commands.Range[float, 1.1, MAX_SCALE] = 2.0,
    ) -> None:
        await interaction.response.defer(thinking=True)
        result = await self.jobs.upscale(
            await read_attachment(image), upscaler, scale, requester=asker(interaction).user_id
        )
        verdict = await self.jobs.picture_verdict(place(interaction), result.nsfw_score)
        if verdict == "withhold":
            await tell_withheld(interaction, "upscale", 1, 1, unchecked=result.nsfw_score is None)
            return
        limit = interaction.filesize_limit or 10 * 1024 * 1024
        data, extension = await asyncio.to_thread(fit_image, result.png, limit)
        note = "" if extension == "png" else " (sent as JPEG to fit Discord's upload limit, without the parameters)"
        name = f"{image.filename.rsplit('.', 1)[0][:60]}-{result.scale:g}x.{extension}"
        await interaction.followup.send(
            f"{result.width}×{result.height} · {result.postprocessing} · {result.seconds:.1f} s{note}",
            file=discord.File(io.BytesIO(data), filename=name, spoiler=verdict == "spoiler"),
        )


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Upscale(bot))
