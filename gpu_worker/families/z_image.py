"""Z-Image (Tongyi-MAI's 6B single-stream DiT; Turbo and Base), from the files people have, as a
diffusers ZImagePipeline, with no network.

The transformer comes as ComfyUI ships it (Comfy-Org's z_image_turbo_bf16.safetensors: fused
attention projections, the patch embedder as `x_embedder`), alone or under `model.diffusion_model.`,
read by diffusers' own single-file converter; its text encoder is Qwen3-4B (qwen_3_4b.safetensors)
and its VAE FLUX.1's (ae.safetensors), both from the component store (or an all-in-one file's
`text_encoders.qwen3_4b.transformer.` and `vae.`). The tokenizer and chat template are Qwen3's
(common/bundled.py QWEN3_TOKENIZER).

Prompts: the prompt goes through Qwen3's chat template, as the pipeline does; A1111's emphasis means
nothing to a language model's hidden states, so weights are read as plain text (LoRA tags taken out,
`BREAK` a space). CFG: ComfyUI's and A1111's scale (1 = none, Turbo's), diffusers' guidance_scale + 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline, ZImagePipeline, ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

from common.bundled import CONFIG_ROOT
from common.protocol import LoadRequest
from gpu_worker.families.base import BatchRun, Draw
from gpu_worker.families.flow import FlowFamily
from gpu_worker.families.flux import FLUX
from gpu_worker.flow_prompts import plain
from gpu_worker.model_parts import (
    PartError,
    Parts,
    bundled_scheduler,
    check_widths,
    config,
    logical_shape,
    open_checkpoint,
    qwen3_builder,
    qwen3_tokenizer,
    transformer_from,
    transformer_tensors,
    vae_builder,
)

MAX_PROMPT_TOKENS = 512  # the pipeline's: the chat-templated prompt's tokens Qwen3 reads


def z_image_pipeline(
    request: LoadRequest, dtype: torch.dtype, device: str = "cpu", config_root: Path = CONFIG_ROOT
) -> ZImagePipeline:
    """The pipeline for a Z-Image checkpoint `request`; PartError says what is wrong or missing."""
    parts = open_checkpoint(request, dtype, config_root, device)
    folder = parts.folder
    transformer = _transformer(parts)
    text_encoder = parts.part("qwen3", qwen3_builder(folder, "text_encoder", dtype))
    vae = parts.part("vae", vae_builder(folder))
    check_widths(
        request.name,
        (
            ("Qwen3 text encoder", text_encoder.config.hidden_size, transformer.config.cap_feat_dim),
            ("VAE", vae.config.latent_channels, transformer.config.in_channels),
        ),
    )
    scheduler = bundled_scheduler(folder)
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=qwen3_tokenizer(), transformer=transformer
    )


def _transformer(parts: Parts) -> ZImageTransformer2DModel:
    """The transformer in diffusers' names (its converter), its depth, width and heads from the
    tensors, the rotary axes from the bundled config."""
    main = parts.main
    state = convert_z_image_transformer_checkpoint_to_diffusers(transformer_tensors(main))
    try:
        dim, caption = logical_shape(state["cap_embedder.1.weight"])
        head = state["layers.0.attention.norm_q.weight"].shape[0]
        settings = config(parts.folder, "transformer") | {
            "dim": dim,
            "cap_feat_dim": caption,
            "n_heads": dim // head,
            "n_kv_heads": state["layers.0.attention.to_k.weight"].shape[0] // head,
            "n_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers.")),
            "n_refiner_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("noise_refiner.")),
        }
    except (KeyError, ValueError) as e:
        raise PartError(f"{main.path.name} is not a Z-Image transformer this can read (no {e})") from None
    return transformer_from(ZImageTransformer2DModel, settings, state, main)


class ZImage(FlowFamily):
    name = "z-image"
    preview_map = FLUX.preview_map  # FLUX.1's VAE, so FLUX.1's latent space (ComfyUI: latent_formats.Flux)
    latents_in_float32 = True  # the pipeline steps its latents in float32, whatever the model runs in
    img2img_pipeline = ZImageImg2ImgPipeline  # it takes the VAE's latents as they are (img2img, Vary, the hires fix)
    inpaint_pipeline = ZImageInpaintPipeline

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> ZImagePipeline:
        return z_image_pipeline(request, dtype, device)

    def text_inputs(self, run: BatchRun, draw: Draw) -> dict:
        pipe, cfg = run.loaded.pipeline, run.batch.parameters.cfg
        guided = cfg > 1
        embeds, negative = pipe.encode_prompt(
            prompt=[plain(t) for t in draw.prompts],
            negative_prompt=[plain(t) for t in draw.negatives] if guided else None,
            do_classifier_free_guidance=guided,
            max_sequence_length=MAX_PROMPT_TOKENS,
        )
        return {
            "prompt_embeds": embeds,
            "guidance_scale": cfg - 1 if guided else 0.0,
            **({"negative_prompt_embeds": negative} if guided else {}),
        }


Z_IMAGE = ZImage()
