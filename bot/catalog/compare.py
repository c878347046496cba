"""Compare checkpoints honestly: the same prompt and seed on each, one labelled grid image.

Each checkpoint renders at its own native square size (what it was trained for); the grid scales
the tiles to one size and writes each checkpoint's name and AutoV2 hash under its picture.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from bot.checkpoints.registry import CheckpointRegistry
from bot.generation.checkpoint_ref import CheckpointRef, resolve_checkpoint
from bot.generation.jobs import Job, JobState
from bot.generation.service import GenerationService, JobHandle
from bot.rules.policy import readable_score
from common.errors import EaselError

MIN_CHECKPOINTS, MAX_CHECKPOINTS = 2, 6
TILE_MAX = 512
LABEL_HEIGHT = 28
COLUMNS = 3


@dataclass
class CompareResult:
    png: bytes
    seed: int
    tiles: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint name, AutoV2)
    job_ids: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)  # the picture check's, per tile (job)

    @property
    def nsfw_score(self) -> float | None:
        """The highest among the tiles: the grid is judged by it; None when any tile has no readable
        score (the grid then counts as unchecked)."""
        readable = [readable_score(score) for score in self.scores]
        return None if None in readable else max((s for s in readable if s is not None), default=0.0)


def _worst(job: Job) -> float | None:
    """A job's highest picture-check score; None when one of its pictures has no readable score."""
    readable = [readable_score(image.nsfw_score) for image in job.images]
    return None if None in readable else max((s for s in readable if s is not None), default=0.0)


async def resolve_all(registry: CheckpointRegistry, names: list[str], max_checkpoints: int) -> list[CheckpointRef]:
    """Every named checkpoint, refusing before any job is queued: too few, too many, repeats, unknown, unrunnable."""
    cleaned = [n.strip() for n in names if n.strip()]
    limit = min(MAX_CHECKPOINTS, max_checkpoints)
    if len(cleaned) < MIN_CHECKPOINTS:
        raise EaselError(f"name at least {MIN_CHECKPOINTS} checkpoints to compare")
    if len(cleaned) > limit:
        raise EaselError(f"compare at most {limit} checkpoints at once")
    refs = [await resolve_checkpoint(registry, n) for n in cleaned]
    seen: set[str] = set()
    for ref in refs:
        if ref.sha256 in seen:
            raise EaselError(f"{ref.name} is named twice")
        seen.add(ref.sha256)
        if not ref.runnable:
            raise EaselError(f"{ref.name} cannot be run ({ref.architecture})")
    return refs


async def finish_compare(generation: GenerationService, handles: list[JobHandle], prompt: str, seed: int) -> CompareResult:
    """Wait for a comparison's jobs and lay their pictures out in one labelled grid."""
    try:
        jobs = [await handle.wait() for handle in handles]
    except BaseException:  # the caller gave up: nothing is left running
        for handle in handles:
            if not handle.job.state.finished:
                await generation.cancel(handle.job.id)
        raise
    failed = [job for job in jobs if job.state is not JobState.DONE]
    if failed:
        job = failed[0]
        raise EaselError(f"{job.spec.checkpoint.name} did not finish (job {job.id}): {job.error or job.state}")
    png = await asyncio.to_thread(compose_grid, jobs, prompt, seed)
    return CompareResult(
        png=png,
        seed=seed,
        tiles=[(job.spec.checkpoint.name, job.spec.checkpoint.autov2) for job in jobs],
        job_ids=[job.id for job in jobs],
        scores=[_worst(job) for job in jobs],
    )


def compose_grid(jobs: list[Job], prompt: str, seed: int) -> bytes:
    images = [Image.open(io.BytesIO(job.images[0].png)).convert("RGB") for job in jobs]
    side = min(TILE_MAX, *(max(im.size) for im in images))
    columns = min(COLUMNS, len(images))
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * side, rows * (side + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(10, min(16, side // 16)))
    for i, (job, image) in enumerate(zip(jobs, images, strict=True)):
        image.thumbnail((side, side))
        x, y = (i % columns) * side, (i // columns) * (side + LABEL_HEIGHT)
        grid.paste(image, (x + (side - image.width) // 2, y + (side - image.height) // 2))
        label = f"{job.spec.checkpoint.name} [{job.spec.checkpoint.autov2.upper()}]"
        draw.text((x + 4, y + side + 4), _fit(draw, label, font, side - 8), fill="black", font=font)
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "easel-compare",
        json.dumps(
            {
                "prompt": prompt,
                "seed": seed,
                "checkpoints": [[j.spec.checkpoint.name, j.spec.checkpoint.autov2] for j in jobs],
                "jobs": [j.id for j in jobs],
            }
        ),
    )
    out = io.BytesIO()
    grid.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text
