"""The detail pass (common/detail.py, ADetailer's): each face the detector finds in a finished
picture is redrawn by the family's own inpainting pass — Only masked, so the face's region is drawn
at the picture's full size and shrunk back — at the job's prompt, seed and a lower denoising, and
pasted back through the blurred mask; one face after another, as ADetailer does them.

The pass is a batch of its own on the loaded pipeline (the picture as img2img's input, the face's box
as the mask), so every rule of inpainting holds: outside the mask the picture is kept exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from common.detail import CONFIDENCE, DILATE, MASK_BLUR, PADDING
from common.protocol import JobPart
from gpu_worker.families import FAMILIES
from gpu_worker.families.base import BatchRun, Draw
from gpu_worker.previews import png_bytes

if TYPE_CHECKING:
    from gpu_worker.safety import NudityScorer
    from gpu_worker.textual_inversion import EmbeddingCache

Box = tuple[int, int, int, int]
# The runner's way of drawing a pass: its step callback, and its retry after running out of memory.
DrawPass = Callable[[BatchRun, Draw], list[Image.Image]]
NO_FACE = "The detail pass found no face to redraw: the picture is as drawn."


def detail_pictures(
    detector: NudityScorer,
    embeddings: EmbeddingCache,
    draw_pass: DrawPass,
    run: BatchRun,
    job: JobPart,
    pictures: list[Image.Image],
) -> tuple[list[Image.Image], str]:
    """`job`'s pictures with each face redrawn, and a note when none was found in any."""
    out, found = [], 0
    for index, (picture, seed) in enumerate(zip(pictures, job.seeds, strict=True)):
        for box in detector.faces(picture, CONFIDENCE):
            found += 1
            picture = redraw(embeddings, draw_pass, run, job, index, seed, picture, box)
        out.append(picture)
    return out, "" if found else NO_FACE


def face_mask(size: tuple[int, int], box: Box) -> Image.Image:
    """The box, grown by ADetailer's dilation, white on black."""
    mask = Image.new("L", size, 0)
    left, top, right, bottom = box
    ImageDraw.Draw(mask).rectangle(
        (max(0, left - DILATE), max(0, top - DILATE), min(size[0], right + DILATE) - 1, min(size[1], bottom + DILATE) - 1),
        fill=255,
    )
    return mask


def redraw(
    embeddings: EmbeddingCache,
    draw_pass: DrawPass,
    run: BatchRun,
    job: JobPart,
    index: int,
    seed: int,
    picture: Image.Image,
    box: Box,
) -> Image.Image:
    """One face redrawn: the job's own pass, from the picture, only inside the face's mask."""
    batch = run.batch
    prompt, negative = job.prompt_of(index)
    parameters = replace(
        batch.parameters,
        width=picture.width,
        height=picture.height,
        strength=batch.parameters.detail_strength,
        only_masked=True,
        mask_padding=PADDING,
        mask_blur=MASK_BLUR,
        masked_content="original",
        resize_mode="crop",
        hires_scale=0.0,
        control=(),
        edit_images=(),
        regions="",
        detail="",
        subseed_strength=0.0,
    )
    one = replace(
        batch,
        batch_id=f"{batch.batch_id}-detail",
        jobs=(JobPart(job.job_id, prompt, negative, (seed,)),),
        parameters=parameters,
        init_png=png_bytes(picture),
        mask_png=png_bytes(face_mask(picture.size, box)),
        preview_every=0,
        hires_model=None,
        controlnets=(),
        control_pngs=(),
        edit_pngs=(),
    )
    family = FAMILIES[batch.load.family]
    refusal = family.refuses(one)
    if refusal:
        return picture
    pass_run = BatchRun(one, run.loaded, run.upscalers, run.loaded.pipeline)
    family.prepare(pass_run, embeddings)
    [draw] = family.draws(pass_run, list(one.jobs))
    [image] = draw_pass(pass_run, draw)
    return image
