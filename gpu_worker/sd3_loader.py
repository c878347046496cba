"""SD3 and SD3.5 checkpoints (Large, Medium, SD3 Medium) as a diffusers StableDiffusion3Pipeline, with
no network, from the files people have: SAI's (the MMDiT under `model.diffusion_model.` and the VAE
under `first_stage_model.`, its text encoders CLIP-L, CLIP-G and T5-XXL as separate files from the
component store), all-in-one files with the encoders inside (`text_encoders.*`), or the transformer
alone. gpu_worker/model_parts.py reads the parts; gpu_worker/sd3_layout.py the transformer's keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from common.protocol import LoadRequest
from gpu_worker import sd3_layout
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


def sd3_pipeline(request: LoadRequest, dtype: torch.dtype, config_root: Path, device: str = "cpu") -> StableDiffusion3Pipeline:
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
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
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
