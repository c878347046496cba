"""Flux.1 (dev and schnell): a flow-matching transformer, CLIP-L and T5-XXL, from the files people
have, as a diffusers FluxPipeline, with no network.

Two shapes of file (what ComfyUI and Forge users download): all-in-one (the transformer under
`model.diffusion_model.`, CLIP-L, T5-XXL and the VAE beside it: Comfy-Org's flux1-dev-fp8.safetensors)
or the transformer alone in BFL's layout (flux1-dev.safetensors) with CLIP-L, T5-XXL and the VAE
(ae.safetensors) from the component store; gpu_worker/model_parts.py reads the parts either way.
Configs and tokenizers come from the bundled `configs/flux` (or `tiny-flux`) folder; the
transformer's depth and widths from the file itself (gpu_worker/families/flux_layout.py).

Dev takes its guidance as an input (Forge's "Distilled CFG Scale"); a CFG scale above 1 also runs
true classifier-free guidance with the negative prompt, as Forge does (twice the work).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from PIL import Image

from common.bundled import CONFIG_ROOT
from common.protocol import LoadRequest
from gpu_worker.families import flux_layout
from gpu_worker.families.base import BatchRun, Draw, StepCallback
from gpu_worker.families.flow import FlowFamily, call_pipeline
from gpu_worker.families.flux_kontext import KontextPipeline, encode_references
from gpu_worker.flow_prompts import encode_weighted, plain, weighted
from gpu_worker.loaded import derived
from gpu_worker.model_parts import (
    build_transformer,
    check_widths,
    clip_builder,
    clip_tokenizer,
    open_checkpoint,
    t5_builder,
    t5_tokenizer,
    vae_builder,
)


def flux_pipeline(
    request: LoadRequest, dtype: torch.dtype, device: str = "cpu", config_root: Path = CONFIG_ROOT
) -> FluxPipeline:
    """The pipeline for a Flux checkpoint `request`; PartError says what is wrong or missing.
    A part from the component store already loaded on `device` (for another checkpoint) is shared."""
    parts = open_checkpoint(request, dtype, config_root, device)
    folder = parts.folder
    transformer = build_transformer(parts, FluxTransformer2DModel, flux_layout, "Flux")
    clip = parts.part("clip_l", clip_builder(folder, "text_encoder", dtype, projection=False))
    t5 = parts.part("t5xxl", t5_builder(folder, "text_encoder_2", dtype))
    vae = parts.part("vae", vae_builder(folder))
    check_widths(
        request.name,
        (
            ("T5-XXL text encoder", t5.config.d_model, transformer.config.joint_attention_dim),
            ("CLIP-L text encoder", clip.config.hidden_size, transformer.config.pooled_projection_dim),
            ("VAE", vae.config.latent_channels * 4, transformer.config.in_channels),  # 2x2 patches: 4x its channels
        ),
    )
    return FluxPipeline(
        scheduler=flow_scheduler(folder, schnell=not transformer.config.guidance_embeds),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer(str(folder / "tokenizer")),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer(str(folder / "tokenizer_2")),
        transformer=transformer,
    )


def flow_scheduler(folder: Path, schnell: bool) -> FlowMatchEulerDiscreteScheduler:
    """Flux dev's flow-matching schedule (shift by image size); schnell's is unshifted, as BFL's
    flux/sampling.py `get_schedule(shift=False)` for it and diffusers' FLUX.1-schnell config have it."""
    settings = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if schnell:
        settings |= {"use_dynamic_shifting": False, "shift": 1.0}
    return FlowMatchEulerDiscreteScheduler.from_config(settings)


def _text_inputs(pipe, prompts: Sequence[str], negatives: Sequence[str], max_length: int, true_cfg: bool) -> dict:
    """The FluxPipeline's text inputs for these prompts (and negatives, with true CFG)."""
    inputs: dict = {}
    for kind, texts in (("", prompts), ("negative_", negatives if true_cfg else [])):
        if not texts:
            continue
        plains = [plain(t) for t in texts]
        embeds, pooled, _ = pipe.encode_prompt(prompt=plains, prompt_2=plains, max_sequence_length=max_length)
        if any(weighted(t) for t in texts):
            embeds = encode_weighted(pipe.text_encoder_2, pipe.tokenizer_2, texts, max_length, t5=True).to(embeds.dtype)
        inputs |= {f"{kind}prompt_embeds": embeds, f"{kind}pooled_prompt_embeds": pooled}
    return inputs


class Flux(FlowFamily):
    name = "flux"
    controls = True  # Flux ControlNets (InstantX's, Shakker-Labs' Union): gpu_worker/controlnets.py
    edits = True  # FLUX.1 Kontext dev (gpu_worker/families/flux_kontext.py)
    # ComfyUI comfy/latent_formats.py `Flux`: latent_rgb_factors and latent_rgb_factors_bias.
    preview_map = (
        [
            [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433], [-0.0174, 0.0160, 0.0617],
            [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115], [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259],
            [-0.0245, 0.0250, 0.1180], [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
            [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499], [-0.1262, -0.0982, -0.0778],
        ],
        [-0.0329, -0.0718, -0.0851],
    )  # fmt: skip

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> FluxPipeline:
        return flux_pipeline(request, dtype, device)

    def text_inputs(self, run: BatchRun, draw: Draw) -> dict:
        batch, pipe = run.batch, run.loaded.pipeline
        length = 512 if pipe.transformer.config.guidance_embeds else 256  # BFL's T5 lengths: dev, schnell
        true_cfg = batch.parameters.cfg > 1
        return {
            "guidance_scale": batch.parameters.distilled_cfg,
            **({"true_cfg_scale": batch.parameters.cfg} if true_cfg else {}),
            **_text_inputs(pipe, draw.prompts, draw.negatives, length, true_cfg),
        }


    def edit(self, run: BatchRun, draw: Draw, callback: StepCallback, arguments: dict, size: tuple[int, int]) -> list[Image.Image]:
        pipe = derived(run.loaded, "edit", KontextPipeline)  # the loaded modules, nothing copied
        pipe.references = encode_references(pipe, run.references, size)
        try:  # max_area: the job's own size (the pipeline would take any size to a megapixel)
            return call_pipeline(run, pipe, draw, callback, arguments, run.batch.parameters.steps, size, max_area=size[0] * size[1])
        finally:
            pipe.references = []


FLUX = Flux()
