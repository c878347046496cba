"""Tiny FLUX.2 [klein] files in the layouts people have: the transformer alone in BFL's layout (as
flux-2-klein-4b.safetensors; all-in-one too), its Qwen3 text encoder as qwen_3_4b.safetensors (the
tiny Z-Image's: both models use Qwen3-4B) and its VAE as flux2-vae.safetensors (BFL's layout: LDM's
with the quant convolutions inside the encoder and decoder, and the latent batch-norm statistics).
Random weights of the bundled tiny-flux2-klein config's sizes, written through the inverse of the
converters the worker reads them with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

from common.bundled import CONFIG_ROOT
from gpu_worker.ldm_layout import vae_to_ldm
from gpu_worker.testing.tiny_flux import write_part, write_transformer_file
from gpu_worker.testing.tiny_z_image import qwen3_state

FOLDER = CONFIG_ROOT / "tiny-flux2-klein"
PART_FILES = {"qwen3": ("text_encoders", "qwen_3_4b.safetensors"), "vae": ("VAE", "flux2-vae.safetensors")}
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.to_out.0": "img_attn.proj",
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
    "attn.to_add_out": "txt_attn.proj",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
}
_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_FUSED = {"attn.to_q": ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")), "attn.add_q_proj": ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))}
_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def _config(part: str) -> dict:
    return json.loads((FOLDER / part / "config.json").read_text())


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' Flux2Transformer2DModel tensors -> BFL's layout (the inverse of diffusers'
    convert_flux2_transformer_checkpoint_to_diffusers): q, k and v fused, norms as `.scale`, the final
    modulation as (shift, scale)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if stem in _TOP:
            out[f"{_TOP[stem]}.{param}"] = value
        elif stem == "norm_out.linear":
            scale, shift = value.chunk(2, dim=0)
            out[f"final_layer.adaLN_modulation.1.{param}"] = torch.cat([shift, scale], dim=0)
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", stem):
            block, part = f"double_blocks.{m[1]}.", m[2]
            if part in _FUSED:
                fused, names = _FUSED[part]
                out[f"{block}{fused}.{param}"] = torch.cat([state[f"transformer_blocks.{m[1]}.{n}.{param}"] for n in names], dim=0)
            elif part in _DOUBLE:
                out[f"{block}{_DOUBLE[part]}.{'scale' if part.rpartition('.')[2] in _NORMS else param}"] = value
        elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", stem):
            part = m[2]
            out[f"single_blocks.{m[1]}.{_SINGLE[part]}.{'scale' if part.rpartition('.')[2] in _NORMS else param}"] = value
        else:
            raise ValueError(f"no BFL name for FLUX.2 tensor {key!r}")
    return out


def transformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed * 16 + 12)
    model = Flux2Transformer2DModel.from_config(_config("transformer"))
    # diffusers zero-initialises the output layers: random, so that every layer reaches the picture
    state = {k: (torch.randn_like(v) * 0.2 if not v.any() else v) for k, v in model.state_dict().items()}
    return to_original(state)


def vae_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random FLUX.2 VAE in BFL's layout, its batch-norm statistics away from 0 and 1 so that a
    reader that skipped them would draw another picture."""
    torch.manual_seed(seed * 16 + 13)
    vae = AutoencoderKLFlux2.from_config(_config("vae"))
    with torch.no_grad():
        vae.bn.running_mean.normal_(0, 0.3)
        vae.bn.running_var.uniform_(0.5, 2.0)
    state = vae.state_dict()
    ldm = vae_to_ldm({k: v for k, v in state.items() if not k.startswith("bn.")}, vae.config)
    ldm = {k.removeprefix("first_stage_model."): v for k, v in ldm.items()}
    moved = {k.replace("post_quant_conv.", "decoder.post_quant_conv.") if k.startswith("post_quant_conv.") else k.replace("quant_conv.", "encoder.quant_conv.") if k.startswith("quant_conv.") else k: v for k, v in ldm.items()}
    return moved | {"bn.running_mean": state["bn.running_mean"], "bn.running_var": state["bn.running_var"]}


def make_tiny_flux2(out: Path, seed: int = 0, shape: str = "transformer", base: bool = False) -> Path:
    """A tiny FLUX.2 [klein] file (Base when `base`: its metadata says so), the transformer alone or all-in-one."""
    variant = "Base" if base else ""

    def parts() -> dict[str, dict[str, torch.Tensor]]:
        return {"text_encoders.qwen3_4b.transformer.": qwen3_state(seed), "vae.": vae_state(seed)}  # as Z-Image's

    title = f"FLUX.2 [klein] {variant}".strip()
    return write_transformer_file(out, shape, lambda: transformer_state(seed), parts, title, "flux-2-klein" + ("-base" if base else ""), seed)


def make_tiny_flux2_parts(models: Path, seed: int = 0) -> list[Path]:
    """The parts a transformer-only tiny FLUX.2 [klein] file of `seed` runs with, where a user keeps them."""
    return [
        write_part(models, folder, name, qwen3_state(seed) if role == "qwen3" else vae_state(seed),
                   "Qwen3" if role == "qwen3" else "FLUX.2 VAE", seed)
        for role, (folder, name) in PART_FILES.items()
    ]  # fmt: skip


def make_tiny_flux2_lora(out: Path, seed: int = 0) -> Path:
    """A tiny FLUX.2 [klein] LoRA as ai-toolkit writes it for ComfyUI: BFL's names under
    `diffusion_model.` (`double_blocks.0.img_attn.qkv.lora_A.weight`, `single_blocks.0.linear1…`),
    which are FLUX.1's too: the LoRA store tells it by the single block's width."""
    from gpu_worker.testing.tiny_networks import save_tiny_transformer_lora

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in transformer_state(seed).items():
        if name.endswith(("img_attn.qkv.weight", "txt_attn.qkv.weight", "linear1.weight")):
            stem = "diffusion_model." + name.removesuffix(".weight")
            state[f"{stem}.lora_A.weight"] = torch.randn(4, tensor.shape[1], generator=generator, device="cpu")
            state[f"{stem}.lora_B.weight"] = torch.randn(tensor.shape[0], 4, generator=generator, device="cpu") * 0.1
    return save_tiny_transformer_lora(state, out, "Easel tiny FLUX.2 [klein] LoRA (random weights)", seed)
