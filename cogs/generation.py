"""/imagine and /explain. /imagine's rules are in bot/jobs.py; the message it edits and its buttons in cogs/utils/job_messages.py."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation.aspects import ASPECTS
from bot.generation.prompt_explain import expand_template, explain, render
from bot.images.infotext import render_reading
from bot.jobs import ImagineOptions
from bot.rules.limits import (
    MAX_CFG,
    MAX_LORA_WEIGHT,
    MAX_MASK_PADDING,
    MAX_PICTURES_PER_COMMAND,
    MAX_STEPS,
    parse_variation,
    random_seed,
)
from cogs.utils.attachments import read_attachment
from cogs.utils.checkpoint_option import Offered
from cogs.utils.context import asker, place
from cogs.utils.formatting import code_block
from cogs.utils.job_messages import BUTTONS, MakeThisHereButton, run_plan
from cogs.utils.lora_option import Lora
from cogs.utils.sampler_option import Sampler
from cogs.utils.style_option import Styles
from cogs.utils.upscaler_option import HiresUpscaler
from cogs.utils.vae_option import Vae
from common.protocol import MASKED_CONTENT

if TYPE_CHECKING:
    from cogs.app import EaselBot


class Generation(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.jobs = bot.services.jobs

    async def cog_load(self) -> None:
        # Buttons are matched by custom_id pattern, so they keep working after a restart.
        self.bot.add_dynamic_items(*BUTTONS)

    @app_commands.command(name="imagine", description="Make a picture from a prompt with the checkpoint of your choice")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to keep out of the picture",
        checkpoint="Which checkpoint (model) to use",
        aspect="Shape of the picture",
        steps="Denoising steps (more: slower, often finer)",
        cfg="How closely to follow the prompt (CFG scale)",
        cfg_rescale="CFG Rescale φ: tames washed-out or burnt colours at high CFG (0.7 for v-prediction models)",
        sampler="Sampler, as named in the A1111 WebUI; a schedule type may follow (DPM++ 2M SGM Uniform)",
        seed="Seed; -1 for a random one",
        count="How many pictures",
        lora="A LoRA to apply (added to the prompt as <lora:NAME:STRENGTH>)",
        lora_strength="How strongly the LoRA applies (1 = as trained)",
        image="Start from this picture (img2img): PNG, JPEG or WebP",
        strength="With a picture: how much of it is redrawn (denoising strength)",
        mask="With a picture: redraw only where this mask is white (inpainting)",
        hires="Hires fix: draw, enlarge by this factor, and draw again (A1111's Hires upscale)",
        upscaler="Hires fix: how the first picture is enlarged (a latent mode, or an upscaler model)",
        masked_content="With a mask: what the masked part starts from (A1111's Masked content)",
        inpaint_area="With a mask: redraw it within the whole picture, or only its region at full size",
        mask_padding="With Only masked: pixels of context around the mask",
        vae="A VAE in place of the checkpoint's own (A1111's SD VAE)",
        distilled_cfg="Flux dev: its guidance strength (Forge's Distilled CFG Scale; 3.5 by default)",
        variation="A1111's variation seed: STRENGTH (a random one) or SEED:STRENGTH, e.g. 0.2 or 1234:0.2",
        style="Styles from this server's list, comma-separated: merged into the prompt as A1111's styles are",
        regions="Regional Prompter ratio: 1,1 (2 columns), 1,2;1,1, + rows/base 0.2; prompt: a ADDCOL b",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        masked_content=[app_commands.Choice(name=m, value=m) for m in MASKED_CONTENT],
        inpaint_area=[app_commands.Choice(name=a, value=a) for a in ("Whole picture", "Only masked")],
    )
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1500],
        negative: app_commands.Range[str, 0, 1000] | None = None,
        checkpoint: Offered | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        cfg_rescale: app_commands.Range[float, 0.0, 1.0] = 0.0,
        sampler: Sampler | None = None,
        seed: app_commands.Range[int, -1, 4294967295] = -1,
        count: app_commands.Range[int, 1, MAX_PICTURES_PER_COMMAND] = 1,
        lora: Lora | None = None,
        lora_strength: app_commands.Range[float, -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT] = 1.0,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.01, 1.0] = 0.75,
        mask: discord.Attachment | None = None,
        hires: app_commands.Range[float, 1.1, 4.0] | None = None,
        upscaler: HiresUpscaler = "Latent",
        masked_content: str = "original",
        inpaint_area: str = "Whole picture",
        mask_padding: app_commands.Range[int, 0, MAX_MASK_PADDING] = 32,
        vae: Vae | None = None,
        distilled_cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        variation: app_commands.Range[str, 1, 40] | None = None,
        style: Styles | None = None,
        regions: app_commands.Range[str, 1, 200] | None = None,
    ) -> None:
        # Options left out take the channel's, then the server's, then the bot's defaults.
        await interaction.response.defer(thinking=True)  # first, before any work: Discord allows 3 s
        # The picture's parameters by their names in common/parameters.py; None: not given.
        given = {
            "negative": negative,
            "steps": steps,
            "cfg": cfg,
            "cfg_rescale": cfg_rescale,
            "sampler": sampler,
            "seed": seed,
            "count": count,
            "strength": strength,
            "hires_scale": hires or 0.0,
            "hires_upscaler": upscaler,
            "masked_content": masked_content,
            "only_masked": inpaint_area == "Only masked",
            "mask_padding": mask_padding,
            "vae": vae,
            "distilled_cfg": distilled_cfg,
            "regions": regions,
        }
        if variation is not None:
            given["subseed"], given["subseed_strength"] = parse_variation(variation)
        options = ImagineOptions(
            prompt=prompt,
            given=given,
            checkpoint=checkpoint,
            aspect=aspect,
            lora=lora,
            lora_strength=lora_strength,
            init_image=await read_attachment(image) if image is not None else None,
            mask=await read_attachment(mask) if mask is not None else None,
            styles=style or (),
        )
        await run_plan(interaction, await self.jobs.plan_imagine(asker(interaction), place(interaction), options))

    @app_commands.command(name="pnginfo", description="The generation parameters a picture carries (A1111 infotext)")
    @app_commands.describe(image="A PNG, JPEG or WebP made by A1111, Forge, Easel…")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def pnginfo(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        key, info = await self.jobs.read_parameters(await read_attachment(image), asker(interaction).user_id)
        view = discord.ui.View(timeout=None).add_item(MakeThisHereButton(key))
        await interaction.followup.send(code_block(render_reading(info)), view=view, ephemeral=True)

    @app_commands.command(name="explain", description="How a prompt is read: chunks of 75 tokens, weights, editing")
    @app_commands.describe(
        prompt="The prompt to read",
        steps="Sampling steps, for [from:to:when] and [a|b]",
        seed="With wildcards or {a|b}: the picture's seed its prompt is drawn from (default: a random one)",
        regions="The Regional Prompter's divide ratio and options (1,1 rows …): the regions shown",
    )
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def explain_prompt(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1500],
        steps: app_commands.Range[int, 1, MAX_STEPS] = 20,
        seed: app_commands.Range[int, -1, 4294967295] = -1,
        regions: app_commands.Range[str, 1, 200] = "",
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        words = {e.name: e.rank or 1 for e in await self.jobs.embeddings_shown(place(interaction))}
        library = self.jobs.wildcards
        found = await asyncio.to_thread(library.current) if library is not None else None
        text, template = await asyncio.to_thread(expand_template, prompt, seed if seed >= 0 else random_seed(), found)
        reading = await asyncio.to_thread(explain, text, steps, words, regions) | template  # the tokenizer blocks
        await interaction.followup.send(code_block("\n".join(render(reading))), ephemeral=True)


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Generation(bot))
