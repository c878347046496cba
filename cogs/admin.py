"""Owner-only commands: they touch the host's disk. Everyone else gets a private refusal."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checkpoints.merge_plan import METHODS
from bot.checkpoints.merging import MergeRequest
from bot.errors import EaselError
from cogs.catalog import info_embed
from cogs.formatting import CONTENT_MAX, clip
from cogs.generation import EDIT_INTERVAL, refuse

if TYPE_CHECKING:
    from cogs.app import EaselBot


OWNERS_ONLY = "only the bot's owners can do this: it changes files on the bot's host"


@app_commands.allowed_installs(guilds=True, users=True)
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
class Admin(commands.GroupCog, group_name="admin", group_description="Bot owners: manage the checkpoints on disk"):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.services = bot.services
        super().__init__()

    async def refused(self, interaction: discord.Interaction) -> bool:
        """Answer anyone but an owner with a private refusal; True when refused."""
        if interaction.user.id in self.services.settings.owner_ids:
            return False
        await refuse(interaction, OWNERS_ONLY)
        return True

    @app_commands.command(
        name="scan", description="Register new checkpoint files in the models folder, mark missing ones"
    )
    async def scan(self, interaction: discord.Interaction) -> None:
        if await self.refused(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.services.registry.scan()
        lines = [
            f"{len(report.added)} added, {len(report.updated)} updated, {len(report.restored)} restored, "
            f"{len(report.missing)} missing, {report.unchanged} unchanged, {len(report.errors)} skipped"
        ]
        lines += [f"+ {e.name} ({e.architecture})" for e in report.added]
        lines += [f"skipped {path}: {reason}" for path, reason in report.errors]
        await interaction.edit_original_response(content=clip("\n".join(lines), CONTENT_MAX))

    @app_commands.command(name="add", description="Register one checkpoint file from the models folder")
    @app_commands.describe(path="Path inside the models folder", name="Name (default: the file's)", nsfw="Mark it NSFW")
    async def add(
        self, interaction: discord.Interaction, path: str, name: str | None = None, nsfw: bool = False
    ) -> None:
        if await self.refused(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            entry = await self.services.registry.add(Path(path), name=name, nsfw=True if nsfw else None)
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await interaction.edit_original_response(content="Registered.", embed=info_embed(entry))

    @app_commands.command(name="remove", description="Forget a checkpoint (its file stays on disk)")
    async def remove(self, interaction: discord.Interaction, checkpoint: str) -> None:
        if await self.refused(interaction):
            return
        try:
            entry = await self.services.registry.remove(checkpoint)
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await interaction.response.send_message(
            f"Removed **{entry.name}** from the catalog; the file {entry.relative_path} is still on disk.",
            ephemeral=True,
        )

    @app_commands.command(name="merge", description="Merge checkpoints as A1111's Checkpoint Merger does")
    @app_commands.describe(
        primary="Model A",
        secondary="Model B (weighted sum, add difference)",
        tertiary="Model C (add difference: the model B was trained from)",
        method="(1-M)·A + M·B, A + M·(B-C), or a copy of A",
        multiplier="M, from 0 to 1",
        fp16="Save float weights as fp16",
        bake_vae="A VAE .safetensors file in the models folder to put in place of the model's own",
        prune="Drop EMA weights",
        name="Name of the new checkpoint",
    )
    @app_commands.choices(method=[app_commands.Choice(name=m.replace("_", " "), value=m) for m in METHODS])
    async def merge(
        self,
        interaction: discord.Interaction,
        primary: str,
        method: str,
        secondary: str | None = None,
        tertiary: str | None = None,
        multiplier: app_commands.Range[float, 0.0, 1.0] = 0.5,
        fp16: bool = False,
        bake_vae: str | None = None,
        prune: bool = False,
        name: str | None = None,
    ) -> None:
        if await self.refused(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        last = 0.0

        async def show(text: str) -> None:
            await interaction.edit_original_response(content=clip(text, CONTENT_MAX))

        edits: list[asyncio.Task[None]] = []

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= EDIT_INTERVAL:
                last = now
                edits.append(asyncio.get_running_loop().create_task(show(f"Merging… {done}/{total} tensors")))

        request = MergeRequest(primary, method, multiplier, secondary, tertiary, bake_vae, fp16, prune, name)
        try:
            entry = await self.services.merges.merge(request, progress)
        except EaselError as e:
            await asyncio.gather(*edits)
            await refuse(interaction, str(e))
            return
        await asyncio.gather(*edits)  # progress edits land before the result, never after it
        parents = ", ".join(f"{p['name']} ({p['autov2'].upper()})" for p in entry.lineage)
        await show(f"Merged **{entry.name}** [{entry.autov2.upper()}] · {entry.architecture}\nParents: {parents}")

    @app_commands.command(name="edit", description="Change a checkpoint's name, description, tags or NSFW flag")
    @app_commands.describe(
        checkpoint="The checkpoint to edit",
        name="New name",
        description="New description",
        tags="Comma-separated tags (replace the current ones)",
        nsfw="Only in age-restricted channels and DMs",
    )
    async def edit(
        self,
        interaction: discord.Interaction,
        checkpoint: str,
        name: str | None = None,
        description: app_commands.Range[str, 0, 2000] | None = None,
        tags: str | None = None,
        nsfw: bool | None = None,
    ) -> None:
        if await self.refused(interaction):
            return
        try:
            entry = await self.services.registry.edit(
                checkpoint,
                name=name,
                description=description,
                tags=tags.split(",") if tags is not None else None,
                nsfw=nsfw,
            )
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await interaction.response.send_message("Saved.", embed=info_embed(entry), ephemeral=True)

    @remove.autocomplete("checkpoint")
    @edit.autocomplete("checkpoint")
    @merge.autocomplete("primary")
    @merge.autocomplete("secondary")
    @merge.autocomplete("tertiary")
    async def checkpoint_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        needle = current.lower()
        names = [e.name for e in await self.services.registry.list(status="present") if needle in e.name.lower()]
        return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names[:25]]


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Admin(bot))
