"""The detail pass (common/detail.py, ADetailer's): each face or hand the detector finds in a finished
picture is redrawn by the family's own inpainting pass — Only masked, so its region is drawn at the
picture's full size and shrunk back — at the job's prompt, seed and a lower denoising, and pasted back
through the blurred mask; one after another, as ADetailer does them, faces before hands.

A pass finds with ADetailer's detector file (gpu_worker/yolo.py: a box, or a segmentation model's
mask) or, for faces with none installed, the picture check's detector (a box). The redraw is a batch of
its own on the loaded pipeline (the picture as img2img's input, the found region as the mask), so every
rule of inpainting holds: outside the mask the picture is kept exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from common.detail import CONFIDENCE, DILATE, MASK_BLUR, PADDING
from common.protocol import DetectorUse, JobPart
from gpu_worker.families import FAMILIES
from gpu_worker.families.base import BatchRun, Draw
from gpu_worker.previews import png_bytes
from gpu_worker.yolo import Found

if TYPE_CHECKING:
    from gpu_worker.textual_inversion import EmbeddingCache

Box = tuple[int, int, int, int]
# The runner's way of drawing a pass: its step callback, and its retry after running out of memory.
DrawPass = Callable[[BatchRun, Draw], list[Image.Image]]
# A pass's detector: what it finds in a picture at a confidence.
Finder = Callable[[Image.Image, float], list[Found]]
NOTHING_FOUND = {
    "faces": "The detail pass found no face to redraw: the picture is as drawn.",
    "hands": "The detail pass found no hand to redraw: the picture is as drawn.",
}
NO_FACE = NOTHING_FOUND["faces"]


def detail_pictures(
    passes: list[tuple[DetectorUse, Finder]],
    embeddings: EmbeddingCache,
    draw_pass: DrawPass,
    run: BatchRun,
    job: JobPart,
    pictures: list[Image.Image],
) -> tuple[list[Image.Image], str]:
    """`job`'s pictures with each face (then each hand) redrawn; a note for each pass that found nothing."""
    out, found = [], dict.fromkeys((use.target for use, _ in passes), 0)
    for index, (picture, seed) in enumerate(zip(pictures, job.seeds, strict=True)):
        for use, finder in passes:
            for thing in finder(picture, CONFIDENCE):
                found[use.target] += 1
                mask = region_mask(picture.size, thing)
                picture = redraw(embeddings, draw_pass, run, job, index, seed, picture, mask)
        out.append(picture)
    return out, " ".join(NOTHING_FOUND[target] for target, count in found.items() if not count)


def region_mask(size: tuple[int, int], found: Found) -> Image.Image:
    """What was found, grown by ADetailer's dilation, white on black: its box, or a segmentation
    model's mask (kept to its box)."""
    if found.mask is None:
        return face_mask(size, found.box)
    grown = found.mask.point(lambda v: 255 if v >= 128 else 0).filter(ImageFilter.MaxFilter(2 * DILATE + 1))
    return ImageChops.multiply(grown, face_mask(size, found.box))


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
    mask: Image.Image,
) -> Image.Image:
    """One region redrawn: the job's own pass, from the picture, only inside its mask."""
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
        mask_png=png_bytes(mask),
        preview_every=0,
        hires_model=None,
        controlnets=(),
        control_pngs=(),
        edit_pngs=(),
        detectors=(),
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
