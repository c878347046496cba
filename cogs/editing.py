"""/edit and the message command "Edit with Easel": a picture changed as its instruction says, by an
edit model (common/editing.py). The rules are bot/jobs.py's `plan_edit`; the Edit button under every
result and the modal both ask through are in cogs/utils/job_messages.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import MOST_EDIT_PICTURES
from bot.rules.limits import MAX_CFG, MAX_STEPS
from cogs.utils.attachments import read_attachment
from cogs.utils.checkpoint_option import EditModel
from cogs.utils.context import asker, place
from cogs.utils.job_messages import EditModal, run_plan
from common.errors import EaselError

if TYPE_CHECKING:
    from cogs.app import EaselBot

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def message_picture(message: discord.Message) -> discord.Attachment | None:
    """The first picture a message carries as an attachment."""
    for attachment in message.attachments:
        if attachment.filename.lower().endswith(PICTURE_SUFFIXES) or (attachment.content_type or "").startswith("image/"):
            return attachment
    return None


class Editing(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.jobs = bot.services.jobs
        # A message command cannot be a cog method by decorator (discord.py): it is added by hand; its
        # errors go to the tree's handler, as every command's do.
        self.menu = app_commands.ContextMenu(
            name="Edit with Easel",
            callback=self.edit_message,
            allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
            allowed_contexts=app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True),
        )

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @app_commands.command(name="edit", description="Change a picture by saying what to change (an edit model such as FLUX.1 Kontext)")
    @app_commands.describe(
        image="The picture to change: PNG, JPEG or WebP",
        instruction='What to change: "make it night", "put a hat on the cat", "turn it into a watercolour"',
        checkpoint="Which edit model (default: this server's edit checkpoint)",
        image2="A second picture the instruction may refer to",
        image3="A third picture the instruction may refer to",
        seed="Seed; -1 for a random one",
        steps="Denoising steps (default: the model's, 28 for FLUX.1 Kontext)",
        guidance="How strongly the instruction is followed (FLUX.1 Kontext: 2.5; Qwen-Image-Edit: its CFG, 4)",
    )
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        instruction: app_commands.Range[str, 1, 1500],
        checkpoint: EditModel | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        seed: app_commands.Range[int, -1, 4294967295] = -1,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)  # first, before any work: Discord allows 3 s
        attachments = [a for a in (image, image2, image3) if a is not None][:MOST_EDIT_PICTURES]
        pictures = [await read_attachment(a) for a in attachments]
        names = ", ".join(a.filename for a in attachments)
        plan = await self.jobs.plan_edit(
            asker(interaction),
            place(interaction),
            instruction,
            pictures,
            checkpoint=checkpoint,
            given={"seed": seed, "steps": steps},
            credit=f"Edited from {names}",
            guidance=guidance,
        )
        await run_plan(interaction, plan)

    async def edit_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = message_picture(message)
        if picture is None:
            raise EaselError("that message has no picture to edit; use it on a message with an attached picture")
        credit = f"Edited from [a picture by {message.author.display_name}]({message.jump_url})"
        await interaction.response.send_modal(EditModal(picture, credit))


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Editing(bot))
