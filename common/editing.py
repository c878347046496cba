"""Editing a picture by instruction: which models can, and what an edit is on both sides.

An edit is a job whose prompt is an instruction ("make it night") and whose input pictures the
model reads as references, not as a start to denoise from (that is img2img): the picture comes back
changed as told, its size the job's. Only models trained for it can: FLUX.1 Kontext [dev] (a FLUX.1
transformer, so it loads through the Flux family and its component store), Qwen-Image-Edit (the
first release, and Plus: 2509, 2511), a Qwen-Image transformer, and FLUX.2 [klein], which draws from
text too. A new edit model is a row here and its
family's edit pass in the worker.

FLUX.1 Kontext is told apart from FLUX.1 dev by name, as ComfyUI and Forge users and Civitai tell
them: the two files have the same tensors, so `kontext` in the file's name or in its modelspec
metadata is what marks it (bot/checkpoints/architecture.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The infotext key an edit's input pictures are written under: each picture's sha256 (the kept
# input's identity, bot/images/inputs.py), comma-separated, in order. A1111 writes its img2img input
# as "Init image hash"; no WebUI has a key for an edit's pictures, so this one is Easel's.
INFOTEXT_KEY = "Edit images"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EditModel:
    family: str
    variant: str
    label: str  # what people read: "FLUX.1 Kontext"
    max_pictures: int  # input pictures one edit may take
    steps: int  # the model card's
    guidance: float  # its guidance when the job names none
    files: str  # what to install, for the refusal when a place has no edit model
    # The parameter its guidance is (common/parameters.py): FLUX.1's distilled guidance input, or the
    # CFG scale of a model guided by its negative prompt (Qwen's "true CFG").
    guidance_field: str = "distilled_cfg"


EDIT_MODELS: dict[tuple[str, str], EditModel] = {
    # BFL's model card and diffusers' FluxKontextPipeline example: 28 steps, guidance 2.5. Several
    # pictures: ComfyUI's reference-latent "offset" placement (gpu_worker/families/flux_kontext.py).
    ("flux", "kontext"): EditModel(
        "flux",
        "kontext",
        "FLUX.1 Kontext",
        3,
        28,
        2.5,
        "flux1-kontext-dev.safetensors in the models folder, with clip_l and t5xxl in models/text_encoders "
        "and ae in models/VAE",
    ),
    # Qwen's model cards: Qwen-Image-Edit 50 steps, 2509/2511 40, both true CFG 4. Plus reads up to
    # three pictures (diffusers' QwenImageEditPlusPipeline), the first release one.
    ("qwen-image", "edit"): EditModel(
        "qwen-image", "edit", "Qwen-Image-Edit", 1, 50, 4.0,
        "qwen_image_edit_bf16.safetensors in the models folder, with qwen_2.5_vl_7b in models/text_encoders "
        "and qwen_image_vae in models/VAE",
        "cfg",
    ),
    ("qwen-image", "edit-plus"): EditModel(
        "qwen-image", "edit-plus", "Qwen-Image-Edit Plus", 3, 40, 4.0,
        "qwen_image_edit_2511_bf16.safetensors in the models folder, with qwen_2.5_vl_7b in models/text_encoders "
        "and qwen_image_vae in models/VAE",
        "cfg",
    ),
    # FLUX.2 [klein] draws and edits with one model: each input picture's latents beside the picture
    # being drawn (diffusers' Flux2KleinPipeline `image`); BFL's cards: the distilled release in 4
    # steps without CFG, Base in 50 at CFG 4. Three pictures, as /edit offers.
    ("flux2", "klein"): EditModel(
        "flux2", "klein", "FLUX.2 [klein]", 3, 4, 1.0,
        "flux-2-klein-4b.safetensors in the models folder, with qwen_3_4b in models/text_encoders and flux2-vae in models/VAE",
        "cfg",
    ),
    ("flux2", "base"): EditModel(
        "flux2", "base", "FLUX.2 [klein] Base", 3, 50, 4.0,
        "flux-2-klein-base-4b.safetensors in the models folder, with qwen_3_4b in models/text_encoders and flux2-vae in models/VAE",
        "cfg",
    ),
}


def edit_model(family: str, variant: str) -> EditModel | None:
    """The edit model a checkpoint is, or None when it cannot edit pictures."""
    return EDIT_MODELS.get((family, variant))


def install_hint() -> str:
    """What to install to edit pictures, in one clause."""
    return "; ".join(f"{model.label}: put {model.files}" for model in EDIT_MODELS.values())


def read_hashes(text: str, most: int) -> tuple[str, ...]:
    """An infotext's edit pictures (INFOTEXT_KEY) as sha256s; ValueError, for the person, when the
    value is not that or names more than `most` pictures."""
    hashes = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if len(hashes) > most:
        raise ValueError(f"this edit names {len(hashes)} input pictures; at most {most} are read")
    for value in hashes:
        if not _SHA256.fullmatch(value):
            raise ValueError(f"the picture's {INFOTEXT_KEY} {value[:20]!r} is not a picture's sha256")
    return hashes
