"""FLUX.2 [klein] (Black Forest Labs' 4B and 9B, distilled and Base), from the files people have, as
a diffusers Flux2KleinPipeline, with no network.

The transformer comes as BFL ship it (flux-2-klein-4b.safetensors: BFL's key layout, alone or under
`model.diffusion_model.`), read by diffusers' own single-file converter; its depth and widths from
its tensors, the rest (rotary axes and base) from the bundled config (diffusers'
scripts/convert_flux2_to_diffusers.py gives Klein's). Its text encoder is Qwen3 (4B for Klein 4B,
the qwen_3_4b.safetensors Z-Image uses; 8B for 9B), its VAE FLUX.2's own (flux2-vae.safetensors:
32 latent channels and the batch-norm statistics its latents are normalised by), both from the
component store. The VAE file is BFL's layout, LDM's with the quant convolutions inside the encoder
and decoder, converted as diffusers' script converts it.

Prompts go through Qwen3's chat template; the transformer reads three of Qwen3's hidden layers
stacked (9, 18 and 27 of its 36: a quarter, half and three quarters of its depth; an encoder of
another depth, a test's, is read at the same fractions). Emphasis is plain text, LoRA tags come out.
The distilled Klein runs at CFG 1 in 4 steps; Base with real CFG and the negative prompt. Klein
also edits pictures: each input picture's latents ride beside the picture being drawn (`edit`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLFlux2,
    DiffusionPipeline,
    Flux2KleinInpaintPipeline,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from diffusers.loaders.single_file_utils import (
    convert_flux2_transformer_checkpoint_to_diffusers,
    convert_ldm_vae_checkpoint,
)
from PIL import Image

from common.bundled import CONFIG_ROOT
from common.protocol import LoadRequest, RunBatch
from gpu_worker.families.base import BatchRun, Draw, StepCallback
from gpu_worker.families.flow import FlowFamily, call_pipeline
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
from gpu_worker.previews import vae_previews

MAX_PROMPT_TOKENS = 512  # the pipeline's
# Klein's text encoders have 36 layers and the transformer reads 9, 18 and 27 of them.
_READ_AT = (0.25, 0.5, 0.75)


def flux2_pipeline(request: LoadRequest, dtype: torch.dtype, device: str = "cpu", config_root: Path = CONFIG_ROOT) -> Flux2KleinPipeline:
    """The pipeline for a FLUX.2 [klein] checkpoint `request`; PartError says what is wrong or missing."""
    parts = open_checkpoint(request, dtype, config_root, device)
    folder = parts.folder
    transformer = _transformer(parts)
    text_encoder = parts.part("qwen3", qwen3_builder(folder, "text_encoder", dtype))
    vae = parts.part("vae", vae_builder(folder, AutoencoderKLFlux2, flux2_vae_to_diffusers))
    check_widths(
        request.name,
        (
            ("Qwen3 text encoder", 3 * text_encoder.config.hidden_size, transformer.config.joint_attention_dim),
            ("VAE", 4 * vae.config.latent_channels, transformer.config.in_channels),
        ),
    )
    return Flux2KleinPipeline(
        scheduler=bundled_scheduler(folder),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=qwen3_tokenizer(),
        transformer=transformer,
        is_distilled=request.variant != "base",
    )


def _transformer(parts: Parts) -> Flux2Transformer2DModel:
    main = parts.main
    state = convert_flux2_transformer_checkpoint_to_diffusers(transformer_tensors(main))
    try:
        inner, channels = logical_shape(state["x_embedder.weight"])
        head = logical_shape(state["transformer_blocks.0.attn.norm_q.weight"])[0]
        settings = config(parts.folder, "transformer") | {
            "in_channels": channels,
            "num_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")),
            "num_single_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")),
            "attention_head_dim": head,
            "num_attention_heads": inner // head,
            "joint_attention_dim": logical_shape(state["context_embedder.weight"])[1],
            "timestep_guidance_channels": logical_shape(state["time_guidance_embed.timestep_embedder.linear_1.weight"])[1],
            # the feed-forward's gated input is twice its hidden width
            "mlp_ratio": logical_shape(state["transformer_blocks.0.ff.linear_in.weight"])[0] / 2 / inner,
            "guidance_embeds": any(k.startswith("time_guidance_embed.guidance_embedder.") for k in state),
        }
    except (KeyError, ValueError) as e:
        raise PartError(f"{main.path.name} is not a FLUX.2 transformer this can read (no {e})") from None
    return transformer_from(Flux2Transformer2DModel, settings, state, main)


def flux2_vae_to_diffusers(state: dict[str, torch.Tensor], settings: dict) -> dict[str, torch.Tensor]:
    """BFL's FLUX.2 VAE layout -> AutoencoderKLFlux2's: LDM's, with the quant convolutions kept inside
    the encoder and decoder and the latent batch-norm statistics beside them (diffusers'
    scripts/convert_flux2_to_diffusers.py DIFFUSERS_VAE_TO_FLUX2_MAPPING)."""
    moved = {
        key.replace("encoder.quant_conv.", "quant_conv.").replace("decoder.post_quant_conv.", "post_quant_conv."): value
        for key, value in state.items()
        if not key.startswith("bn.")
    }
    converted = convert_ldm_vae_checkpoint(moved, settings)
    converted |= {key: value for key, value in state.items() if key.startswith("bn.")}
    # the files keep only the statistics; built in CPU RAM with the rest, placed with it
    converted.setdefault("bn.num_batches_tracked", torch.tensor(0, dtype=torch.long, device="cpu"))
    return converted


def encoder_layers(depth: int) -> tuple[int, ...]:
    """The Qwen3 hidden layers the transformer reads: 9, 18 and 27 of Klein's 36."""
    return tuple(round(depth * at) for at in _READ_AT)


class Flux2(FlowFamily):
    name = "flux2"
    edits = True  # [klein] edits with the model it draws with (common/editing.py)
    inpaint_pipeline = Flux2KleinInpaintPipeline

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> Flux2KleinPipeline:
        return flux2_pipeline(request, dtype, device)

    def refuses(self, batch: RunBatch) -> str | None:
        # diffusers has Klein's inpainting pipeline, not an img2img one
        if (batch.init_png is not None and batch.mask_png is None) or batch.parameters.hires_scale:
            return f"{batch.load.name}: FLUX.2 does not start from a picture here yet (img2img, the hires fix); /edit changes one"
        return super().refuses(batch)

    def writes_distilled_cfg(self, batch: RunBatch) -> bool:
        return False  # Klein has no guidance input

    def text_inputs(self, run: BatchRun, draw: Draw) -> dict:
        pipe, cfg = run.loaded.pipeline, run.batch.parameters.cfg
        layers = encoder_layers(pipe.text_encoder.config.num_hidden_layers)
        guided = cfg > 1 and not pipe.config.is_distilled

        def encode(texts: list[str]) -> torch.Tensor:
            embeds, _ = pipe.encode_prompt(
                prompt=[plain(t) for t in texts], max_sequence_length=MAX_PROMPT_TOKENS, text_encoder_out_layers=layers
            )
            return embeds

        inputs = {"prompt_embeds": encode(draw.prompts), "guidance_scale": cfg if guided else 1.0, "text_encoder_out_layers": layers}
        if guided:
            inputs["negative_prompt_embeds"] = encode(draw.negatives)
        return inputs

    def edit(self, run: BatchRun, draw: Draw, callback: StepCallback, arguments: dict, size: tuple[int, int]) -> list[Image.Image]:
        """Klein's edit: each input picture encoded by the VAE (the pipeline takes it to at most a
        megapixel, in multiples of 16) and its tokens set beside the picture being drawn."""
        # among the arguments, not the inputs: the call still starts from the seeds' noise, as from text
        return call_pipeline(run, run.pipe, draw, callback, arguments | {"image": list(run.references)}, run.batch.parameters.steps, size)

    def preview(self, run: BatchRun, pipe: DiffusionPipeline, latents: torch.Tensor) -> Image.Image:
        """The packed tokens (B, H/16 x W/16, 128) back to the VAE's latents: unpacked, the batch-norm
        statistics put back, the 2x2 patches unfolded; then through the VAE (no linear map is known
        for FLUX.2's 32 channels)."""
        width, height = run.size
        grid = latents[:1].reshape(1, height // 16, width // 16, -1).permute(0, 3, 1, 2)
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(grid.device, grid.dtype)
        return vae_previews(pipe, pipe._unpatchify_latents(grid * std + mean), height, width)[0]


FLUX2 = Flux2()
