"""Discord rendering of jobs: embeds, progress lines, sizes. Every Discord limit is enforced here."""

from __future__ import annotations

import discord

from bot.generation.jobs import Job
from bot.rules.network_selection import lora_strength
from common.protocol import hires_size

TITLE_MAX = 256
FIELD_MAX = 1024
CONTENT_MAX = 2000
EMBED_COLOUR = discord.Colour.from_rgb(88, 101, 242)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code_block(text: str) -> str:
    """`text` in one code block that fits a message. A ``` inside it (a prompt may hold one) would
    close the block early; a zero-width space keeps it shut."""
    shut = text.replace("```", "`\u200b``")
    return f"```\n{clip(shut, CONTENT_MAX - 8)}\n```"


def result_embed(job: Job, requester: str) -> discord.Embed:
    spec, request = job.spec, job.spec.parameters
    embed = discord.Embed(title=clip(request.prompt.strip(), TITLE_MAX), colour=EMBED_COLOUR)
    if request.negative:
        embed.add_field(name="Negative", value=clip(request.negative, FIELD_MAX), inline=False)
    embed.add_field(
        name="Checkpoint", value=clip(f"{spec.checkpoint.name} [{spec.checkpoint.autov2.upper()}]", FIELD_MAX)
    )
    embed.add_field(
        name="Seed" + ("s" if len(job.images) > 1 else ""), value=", ".join(str(i.seed) for i in job.images)
    )
    if request.init_image:
        masked = f" · inpainting, mask blur {request.mask_blur}" if request.mask_image else ""
        if request.mask_image and request.masked_content != "original":
            masked += f", masked content {request.masked_content}"
        if request.mask_image and request.only_masked:
            masked += f", only masked (padding {request.mask_padding})"
        embed.add_field(name="From a picture", value=f"denoising strength {request.strength:g}{masked}")
    if request.edit_images:  # the instruction is the title; the pictures it changed are credited in the notes
        count = len(request.edit_images)
        guidance = f" · guidance {request.distilled_cfg:g}" if request.distilled_cfg else ""
        embed.add_field(name="Edit", value=f"{count} input picture{'s' if count > 1 else ''}{guidance}")
    if request.hires_scale:
        big_w, big_h = hires_size(spec.width, spec.height, request.hires_scale)
        embed.add_field(
            name="Hires fix",
            value=f"{big_w}×{big_h} · {request.hires_upscaler} · denoising {request.hires_denoise:g}",
        )
    if spec.loras:
        embed.add_field(
            name="LoRAs", value=clip(", ".join(f"{use.name} {lora_strength(use)}" for use in spec.loras), FIELD_MAX)
        )
    embed.add_field(name="Size", value=f"{spec.width}×{spec.height}")
    embed.add_field(name="Steps", value=str(request.steps))
    rescale = f" · rescale φ {request.cfg_rescale:g}" if request.cfg_rescale else ""
    embed.add_field(name="CFG", value=f"{request.cfg:g}{rescale}")
    if spec.vae:
        embed.add_field(name="VAE", value=clip(spec.vae.name, FIELD_MAX))
    embed.add_field(name="Sampler", value=f"{spec.parameters.sampler} · {spec.parameters.schedule}")
    if job.inference_seconds is not None:
        embed.add_field(name="Time", value=f"{job.inference_seconds:.1f} s on {job.device}")
    embed.set_footer(text=clip(f"job {job.id} · requested by {requester}", 2048))
    return embed


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f", about {max(1, round(seconds))} s"
    return f", about {round(seconds / 60)} min"
