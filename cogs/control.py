"""/control: a picture drawn to follow another's edges, lines or layout (ControlNet, as the A1111
extension runs it), up to three units. /imagine has Discord's 25 options already; this is its
ControlNet twin, and its rules are /imagine's (bot/jobs.py `plan_imagine`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.aspects import ASPECTS
from bot.jobs import ControlAsk, ImagineOptions
from bot.rules.limits import MAX_CFG, MAX_PICTURES_PER_COMMAND, MAX_STEPS
from cogs.utils.attachments import read_attachment
from cogs.utils.checkpoint_option import Offered
from cogs.utils.context import asker, place
from cogs.utils.controlnet_option import MODES, ControlNet, Preprocessor
from cogs.utils.job_messages import run_plan
from cogs.utils.sampler_option import Sampler
from common.control import ControlUnit
from common.detail import TARGETS as DETAIL_TARGETS

if TYPE_CHECKING:
    from cogs.app import EaselBot


class Control(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.jobs = bot.services.jobs

    @app_commands.command(name="control", description="Draw a picture that follows another's edges, lines or layout (ControlNet)")
    @app_commands.describe(
        image="The picture to follow: PNG, JPEG or WebP",
        prompt="What to draw",
        preprocessor="What is taken from the picture: canny edges, scribble lines, a blurred tile…; none: it is a map already",
        model="Which ControlNet (default: the installed one named for the preprocessor)",
        weight="How strongly it steers (0-2)",
        start="From this share of the steps on (0-1)",
        end="Up to this share of the steps (0-1)",
        mode="The A1111 extension's Control Mode",
        image2="A second picture to follow (a second unit)",
        preprocessor2="The second unit's preprocessor",
        model2="The second unit's ControlNet",
        weight2="The second unit's weight",
        image3="A third picture to follow (a third unit)",
        preprocessor3="The third unit's preprocessor",
        model3="The third unit's ControlNet",
        weight3="The third unit's weight",
        negative="What to keep out of the picture",
        checkpoint="Which checkpoint (SD1, SD2 or SDXL)",
        aspect="Shape of the picture (default: the first picture's own)",
        steps="Denoising steps",
        cfg="How closely to follow the prompt (CFG scale)",
        sampler="Sampler, as named in the A1111 WebUI",
        seed="Seed; -1 for a random one",
        count="How many pictures",
        detail="ADetailer's pass after the picture: each face (hand) found redrawn at full size",
    )
    @app_commands.choices(
        mode=MODES,
        detail=[app_commands.Choice(name=t, value=t) for t in DETAIL_TARGETS],
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
    )
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def control(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 1500],
        preprocessor: Preprocessor = "canny",
        model: ControlNet | None = None,
        weight: app_commands.Range[float, 0.0, 2.0] = 1.0,
        start: app_commands.Range[float, 0.0, 1.0] = 0.0,
        end: app_commands.Range[float, 0.0, 1.0] = 1.0,
        mode: str = "Balanced",
        image2: discord.Attachment | None = None,
        preprocessor2: Preprocessor = "canny",
        model2: ControlNet | None = None,
        weight2: app_commands.Range[float, 0.0, 2.0] = 1.0,
        image3: discord.Attachment | None = None,
        preprocessor3: Preprocessor = "canny",
        model3: ControlNet | None = None,
        weight3: app_commands.Range[float, 0.0, 2.0] = 1.0,
        negative: app_commands.Range[str, 0, 1000] | None = None,
        checkpoint: Offered | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        sampler: Sampler | None = None,
        seed: app_commands.Range[int, -1, 4294967295] = -1,
        count: app_commands.Range[int, 1, MAX_PICTURES_PER_COMMAND] = 1,
        detail: str | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)  # first, before any work: Discord allows 3 s
        units = []
        for picture, module, name, strength in (
            (image, preprocessor, model, weight),
            (image2, preprocessor2, model2, weight2),
            (image3, preprocessor3, model3, weight3),
        ):
            if picture is not None:  # start, end and mode are the first unit's, for every unit
                units.append(ControlAsk(await read_attachment(picture), ControlUnit("", module, name or "", strength, start, end, mode)))
        given = {"negative": negative, "steps": steps, "cfg": cfg, "sampler": sampler, "seed": seed, "count": count, "detail": detail}
        options = ImagineOptions(prompt=prompt, given=given, checkpoint=checkpoint, aspect=aspect, control=tuple(units))
        await run_plan(interaction, await self.jobs.plan_imagine(asker(interaction), place(interaction), options))


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Control(bot))
