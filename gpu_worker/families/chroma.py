"""Chroma (lodestones' Chroma1-HD and Base): FLUX.1 schnell's transformer, pruned of its CLIP input and
per-block modulations, which a small network (`distilled_guidance_layer`) computes instead; T5-XXL
only, FLUX.1's VAE, real CFG with the negative prompt. As a diffusers ChromaPipeline, with no network.

Files come as their makers ship them: the transformer alone in BFL's key layout (Chroma1-HD.safetensors),
its T5-XXL and VAE from the component store (the same t5xxl_fp16.safetensors and ae.safetensors Flux
takes), or all-in-one under ComfyUI's prefixes. The keys Chroma shares with FLUX.1 are read by
gpu_worker/families/flux_layout.py; the modulation network's as diffusers' converter names them
(`in_layer`/`out_layer` → `linear_1`/`linear_2`, `norms.N.scale` → `.weight`), its widths from the file.
Prompts: LoRA tags out, `BREAK` a space, emphasis as plain text (Chroma masks T5's padding, which the
emphasis reweighting of Flux's T5 tokens does not model).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import ChromaImg2ImgPipeline, ChromaInpaintPipeline, ChromaPipeline, ChromaTransformer2DModel
from diffusers.models.embeddings import get_timestep_embedding

from common.bundled import CONFIG_ROOT
from common.protocol import LoadRequest
from gpu_worker.families import flux_layout
from gpu_worker.families.base import BatchRun, Draw
from gpu_worker.families.flow import FlowFamily
from gpu_worker.families.flux import FLUX, flow_scheduler
from gpu_worker.flow_prompts import plain
from gpu_worker.model_parts import (
    PartError,
    check_widths,
    config,
    open_checkpoint,
    shapes,
    t5_builder,
    t5_tokenizer,
    transformer_from,
    transformer_tensors,
    vae_builder,
)

GUIDANCE = "distilled_guidance_layer."
MAX_PROMPT_TOKENS = 512


def to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Chroma's original-layout tensors (no prefix) -> diffusers names; unknown keys raise."""
    shared = {k: v for k, v in state.items() if not k.startswith(GUIDANCE)}
    out = flux_layout.to_diffusers(shared)
    for key, value in state.items():
        if key.startswith(GUIDANCE):
            name = key.replace(".in_layer.", ".linear_1.").replace(".out_layer.", ".linear_2.")
            out[re.sub(r"(norms\.\d+)\.scale$", r"\1.weight", name)] = value
    return out


def to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ChromaTransformer2DModel tensors -> the original layout (for writing test files)."""
    out = flux_layout.to_original({k: v for k, v in state.items() if not k.startswith(GUIDANCE)})
    for key, value in state.items():
        if key.startswith(GUIDANCE):
            name = key.replace(".linear_1.", ".in_layer.").replace(".linear_2.", ".out_layer.")
            out[re.sub(r"(norms\.\d+)\.weight$", r"\1.scale", name)] = value
    return out


def transformer_config(shapes: Mapping[str, tuple[int, ...]], base: Mapping[str, object]) -> dict[str, object]:
    """ChromaTransformer2DModel's config from original-layout tensors; its rotary axes FLUX.1's."""
    head = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    inner = shapes["img_in.weight"][0]

    def count(prefix: str, at: int = 1) -> int:
        return 1 + max((int(k.split(".")[at]) for k in shapes if k.startswith(prefix)), default=-1)

    return {
        "patch_size": 1,
        "in_channels": shapes["img_in.weight"][1],
        "out_channels": shapes["final_layer.linear.weight"][0],
        "num_layers": count("double_blocks."),
        "num_single_layers": count("single_blocks."),
        "attention_head_dim": head,
        "num_attention_heads": inner // head,
        "joint_attention_dim": shapes["txt_in.weight"][1],
        "axes_dims_rope": base["axes_dims_rope"],
        "approximator_num_channels": shapes[GUIDANCE + "in_proj.weight"][1],
        "approximator_hidden_dim": shapes[GUIDANCE + "in_proj.weight"][0],
        "approximator_layers": count(GUIDANCE + "layers.", 2),
    }


def chroma_pipeline(
    request: LoadRequest, dtype: torch.dtype, device: str = "cpu", config_root: Path = CONFIG_ROOT
) -> ChromaPipeline:
    """The pipeline for a Chroma checkpoint `request` (FLUX.1's config folder: its T5, tokenizer, VAE
    and schedule); PartError says what is wrong or missing."""
    parts = open_checkpoint(request, dtype, config_root, device)
    folder, main = parts.folder, parts.main
    state = transformer_tensors(main)
    try:
        settings = transformer_config(shapes(state), config(folder, "transformer"))
        converted = to_diffusers(state)
    except (KeyError, ValueError) as e:
        raise PartError(f"{main.path.name} is not a Chroma transformer this can read: {e}") from None
    transformer = transformer_from(ChromaTransformer2DModel, settings, converted, main)
    # diffusers 0.42's ChromaInpaintPipeline asks its transformer's config for `guidance_embeds`, which
    # ChromaTransformer2DModel's has no field for (Chroma has no guidance input): said so, as False.
    transformer.register_to_config(guidance_embeds=False)
    # Its one buffer outside the state dict (the modulation indices' embedding; left on the meta
    # device above), computed as diffusers' ChromaCombinedTimestepTextProjEmbeddings computes it.
    embed = transformer.time_text_embed
    rows, width = embed.mod_proj.shape
    positions = torch.arange(rows, device="cpu") * 1000  # built in CPU RAM like the rest; placed with it
    embed.register_buffer(
        "mod_proj", get_timestep_embedding(positions, width, flip_sin_to_cos=True, downscale_freq_shift=0), persistent=False
    )
    t5 = parts.part("t5xxl", t5_builder(folder, "text_encoder_2", dtype))
    vae = parts.part("vae", vae_builder(folder))
    check_widths(
        request.name,
        (
            ("T5-XXL text encoder", t5.config.d_model, transformer.config.joint_attention_dim),
            ("VAE", vae.config.latent_channels * 4, transformer.config.in_channels),
        ),
    )
    return ChromaPipeline(
        scheduler=flow_scheduler(folder, schnell=False),
        vae=vae,
        text_encoder=t5,
        tokenizer=t5_tokenizer(str(folder / "tokenizer_2")),
        transformer=transformer,
    )


class Chroma(FlowFamily):
    name = "chroma"
    preview_map = FLUX.preview_map  # FLUX.1's VAE, so FLUX.1's latent space
    img2img_pipeline = ChromaImg2ImgPipeline  # AutoPipeline has no Chroma entry
    inpaint_pipeline = ChromaInpaintPipeline

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> ChromaPipeline:
        return chroma_pipeline(request, dtype, device)

    def text_inputs(self, run: BatchRun, draw: Draw) -> dict:
        pipe, cfg = run.loaded.pipeline, run.batch.parameters.cfg
        guided = cfg > 1
        embeds, _, mask, negative, _, negative_mask = pipe.encode_prompt(
            prompt=[plain(t) for t in draw.prompts],
            negative_prompt=[plain(t) for t in draw.negatives] if guided else None,
            do_classifier_free_guidance=guided,
            max_sequence_length=MAX_PROMPT_TOKENS,
        )
        inputs = {"prompt_embeds": embeds, "prompt_attention_mask": mask, "guidance_scale": cfg}
        if guided:
            inputs |= {"negative_prompt_embeds": negative, "negative_prompt_attention_mask": negative_mask}
        return inputs


CHROMA = Chroma()
