"""/queue: a server's moderators (Manage Server) see its unfinished jobs and can cancel them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.jobs import Job, JobState
from cogs.utils.checks import manages_server
from cogs.utils.formatting import EMBED_COLOUR, clip
from cogs.utils.views import OwnedView

if TYPE_CHECKING:
    from bot.generation.service import GenerationService
    from cogs.app import EaselBot

SHOWN = 25  # one select menu's worth


def describe(job: Job, position: int | None) -> str:
    where = "running" if job.state is JobState.RUNNING else f"#{position} in line"
    who = job.spec.request.requester_name or job.requester_id
    return f"{where} · {who} · {job.spec.checkpoint.name} · {job.spec.parameters.prompt.strip()}"


class Moderation(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.generation = bot.services.generation

    @app_commands.command(name="queue", description="This server's waiting and running jobs (Manage Server)")
    @manages_server("only members who can manage this server can see and cancel its queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        jobs = self.generation.guild_jobs(str(interaction.guild_id))
        if not jobs:
            await interaction.response.send_message("Nothing is waiting or running in this server.", ephemeral=True)
            return
        lines = [clip(describe(job, self.generation.position(job.id)), 200) for job in jobs[:SHOWN]]
        embed = discord.Embed(title=f"Queue · {len(jobs)} job(s)", description="\n".join(lines), colour=EMBED_COLOUR)
        picker = CancelPicker(interaction.user.id, jobs[:SHOWN], self.generation)
        await picker.send(interaction, embed=embed, ephemeral=True)


class CancelPicker(OwnedView):
    def __init__(self, owner_id: int, jobs: list[Job], generation: GenerationService) -> None:
        super().__init__(owner_id, timeout=300)
        self.generation = generation
        self.pick.options = [
            discord.SelectOption(label=clip(f"{job.id} · {job.spec.parameters.prompt.strip()}", 100), value=job.id)
            for job in jobs
        ]

    @discord.ui.select(placeholder="Cancel a job…", options=[discord.SelectOption(label="-")])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        outcome = await self.generation.cancel(select.values[0])  # as a moderator: only they opened this
        await interaction.response.send_message(f"Job {select.values[0]}: {outcome}.", ephemeral=True)


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Moderation(bot))
