"""SD3 and SD3.5: a flow-matching MMDiT, CLIP-L, CLIP-G and T5-XXL, classifier-free guidance with the
negative prompt as SAI runs it. Checkpoints (Large, Medium, SD3 Medium) as a diffusers StableDiffusion3Pipeline, with
no network, from the files people have: SAI's (the MMDiT under `model.diffusion_model.` and the VAE
under `first_stage_model.`, its text encoders CLIP-L, CLIP-G and T5-XXL as separate files from the
component store), all-in-one files with the encoders inside (`text_encoders.*`), or the transformer
alone. gpu_worker/model_parts.py reads the parts; gpu_worker/families/sd3_layout.py the transformer's keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

from common.bundled import CONFIG_ROOT
from common.protocol import LoadRequest
from gpu_worker.families import sd3_layout
from gpu_worker.families.base import BatchRun, Draw
from gpu_worker.families.flow import FlowFamily
from gpu_worker.flow_prompts import encode_weighted, plain, weighted
from gpu_worker.model_parts import (
    build_transformer,
    bundled_scheduler,
    check_widths,
    clip_builder,
    clip_tokenizer,
    open_checkpoint,
    t5_builder,
    t5_tokenizer,
    vae_builder,
)


def sd3_pipeline(
    request: LoadRequest, dtype: torch.dtype, device: str = "cpu", config_root: Path = CONFIG_ROOT
) -> StableDiffusion3Pipeline:
    """The pipeline for an SD3 checkpoint `request`; PartError says what is wrong or missing."""
    parts = open_checkpoint(request, dtype, config_root, device)
    folder = parts.folder
    transformer = build_transformer(parts, SD3Transformer2DModel, sd3_layout, "SD3")
    clip_l = parts.part("clip_l", clip_builder(folder, "text_encoder", dtype, projection=True))
    clip_g = parts.part("clip_g", clip_builder(folder, "text_encoder_2", dtype, projection=True))
    t5 = parts.part("t5xxl", t5_builder(folder, "text_encoder_3", dtype))
    vae = parts.part("vae", vae_builder(folder))
    settings = transformer.config
    pooled = clip_l.config.projection_dim + clip_g.config.projection_dim
    check_widths(
        request.name,
        (
            ("CLIP-L and CLIP-G text encoders", pooled, settings.pooled_projection_dim),
            ("T5-XXL text encoder", t5.config.d_model, settings.joint_attention_dim),
            ("VAE", vae.config.latent_channels, settings.in_channels),
        ),
    )
    scheduler = bundled_scheduler(folder)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer(str(folder / "tokenizer")),
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer(str(folder / "tokenizer_2")),
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer(str(folder / "tokenizer_3")),
    )


def _text_inputs(pipe, prompts: Sequence[str], negatives: Sequence[str], max_length: int) -> dict:
    """The StableDiffusion3Pipeline's text inputs: CLIP-L's and CLIP-G's penultimate layers side by
    side, padded to T5's width, then T5's tokens after them; the two CLIPs' projections pooled."""
    plains, plain_negatives = [plain(t) for t in prompts], [plain(t) for t in negatives]
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=plains, prompt_2=plains, prompt_3=plains,
        negative_prompt=plain_negatives, negative_prompt_2=plain_negatives, negative_prompt_3=plain_negatives,
        do_classifier_free_guidance=True, max_sequence_length=max_length,
    )  # fmt: skip
    inputs = {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
    for key, texts in (("prompt_embeds", prompts), ("negative_prompt_embeds", negatives)):
        if any(weighted(t) for t in texts):
            inputs[key] = _sd3_weighted(pipe, texts, max_length, inputs[key])
    return inputs | {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}


def _sd3_weighted(pipe, texts: Sequence[str], max_length: int, unweighted: torch.Tensor) -> torch.Tensor:
    length = pipe.tokenizer_max_length
    clip = torch.cat(
        [
            encode_weighted(pipe.text_encoder, pipe.tokenizer, texts, length, t5=False, hidden_layer=-2),
            encode_weighted(pipe.text_encoder_2, pipe.tokenizer_2, texts, length, t5=False, hidden_layer=-2),
        ],
        dim=-1,
    )
    clip = torch.nn.functional.pad(clip, (0, unweighted.shape[-1] - clip.shape[-1]))
    t5 = encode_weighted(pipe.text_encoder_3, pipe.tokenizer_3, texts, max_length, t5=True)
    return torch.cat([clip, t5], dim=-2).to(unweighted.dtype)


class StableDiffusion3(FlowFamily):
    name = "sd3"
    # ComfyUI comfy/latent_formats.py `SD3`: latent_rgb_factors and latent_rgb_factors_bias.
    preview_map = (
        [
            [-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458], [0.0856, 0.0339, 0.0902],
            [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309], [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358],
            [-0.0194, 0.0020, 0.0669], [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
            [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293], [-0.1448, -0.1463, -0.1189],
        ],
        [0.2394, 0.2135, 0.1925],
    )  # fmt: skip

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> StableDiffusion3Pipeline:
        return sd3_pipeline(request, dtype, device)

    def text_inputs(self, run: BatchRun, draw: Draw) -> dict:
        pipe = run.loaded.pipeline
        return {"guidance_scale": run.batch.parameters.cfg, **_text_inputs(pipe, draw.prompts, draw.negatives, 256)}


SD3 = StableDiffusion3()
