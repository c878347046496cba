"""/queue: a server's moderators (Manage Server) see its unfinished jobs and can cancel them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import EaselError
from bot.generation.jobs import Job, JobState
from cogs.errors import AnsweringView, refuse
from cogs.formatting import EMBED_COLOUR, clip

if TYPE_CHECKING:
    from cogs.app import EaselBot

SHOWN = 25  # one select menu's worth


def describe(job: Job, position: int | None) -> str:
    where = "running" if job.state is JobState.RUNNING else f"#{position} in line"
    who = job.spec.request.requester_name or job.requester_id
    return f"{where} · {who} · {job.spec.checkpoint.name} · {job.spec.request.prompt.strip()}"


class Moderation(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.generation = bot.services.generation

    @app_commands.command(name="queue", description="This server's waiting and running jobs (Manage Server)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def queue(self, interaction: discord.Interaction) -> None:
        if not interaction.permissions.manage_guild:
            await refuse(interaction, "only members who can manage this server can see and cancel its queue")
            return
        jobs = self.generation.guild_jobs(str(interaction.guild_id))
        if not jobs:
            await interaction.response.send_message("Nothing is waiting or running in this server.", ephemeral=True)
            return
        lines = [clip(describe(job, self.generation.position(job.id)), 200) for job in jobs[:SHOWN]]
        embed = discord.Embed(title=f"Queue · {len(jobs)} job(s)", description="\n".join(lines), colour=EMBED_COLOUR)
        await interaction.response.send_message(
            embed=embed, view=CancelPicker(jobs[:SHOWN], self.generation), ephemeral=True
        )


class CancelPicker(AnsweringView):
    def __init__(self, jobs: list[Job], generation) -> None:
        super().__init__(timeout=300)
        self.generation = generation
        self.pick.options = [
            discord.SelectOption(label=clip(f"{job.id} · {job.spec.request.prompt.strip()}", 100), value=job.id)
            for job in jobs
        ]

    @discord.ui.select(placeholder="Cancel a job…", options=[discord.SelectOption(label="-")])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        if not interaction.permissions.manage_guild:
            await refuse(interaction, "only members who can manage this server can cancel its jobs")
            return
        try:
            outcome = await self.generation.cancel(select.values[0])  # as a moderator
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await interaction.response.send_message(f"Job {select.values[0]}: {outcome}.", ephemeral=True)


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Moderation(bot))
