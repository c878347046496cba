"""Flux transformer weights: Black Forest Labs' original key layout <-> diffusers' FluxTransformer2DModel.

The original layout is what single files carry (BFL's flux1-dev.safetensors; ComfyUI's all-in-one
files under `model.diffusion_model.`). The names and the two reorderings follow BFL's
flux/model.py and diffusers' single_file_utils.py (convert_flux_transformer_checkpoint_to_diffusers);
ours takes the hidden width from the tensors rather than assuming 3072, so a tiny test model and a
pruned one load through the same code.
- double blocks keep q, k and v fused (`img_attn.qkv`); single blocks fuse q, k, v and the MLP's
  input projection (`linear1`).
- the final AdaLayerNorm stores (shift, scale); diffusers' stores (scale, shift).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# (original, diffusers) name pairs for tensors that map one to one, per block; "{}" is the block index.
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_SINGLE = {"linear2": "proj_out", "modulation.lin": "norm.linear"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_FINAL_NORM = ("final_layer.adaLN_modulation.1", "norm_out.linear")
_SINGLE_SPLIT = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-layout Flux transformer tensors (no prefix) -> diffusers names. Unknown keys raise."""
    inner = state["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if stem in _TOP:
            out[f"{_TOP[stem]}.{param}"] = value
        elif stem == _FINAL_NORM[0]:
            out[f"{_FINAL_NORM[1]}.{param}"] = _swap_halves(value)
        elif m := re.fullmatch(r"double_blocks\.(\d+)\.(.+)", key):
            i, rest = m[1], m[2]
            part, _, param = rest.rpartition(".")
            block = f"transformer_blocks.{i}."
            if rest in _NORMS:
                out[block + _NORMS[rest]] = value
            elif part in _DOUBLE:
                out[f"{block}{_DOUBLE[part]}.{param}"] = value
            elif part in _QKV:
                for name, piece in zip(_QKV[part], value.chunk(3, dim=0), strict=True):
                    out[f"{block}{name}.{param}"] = piece
            else:
                raise ValueError(f"unknown Flux tensor {key!r}")
        elif m := re.fullmatch(r"single_blocks\.(\d+)\.(.+)", key):
            i, rest = m[1], m[2]
            part, _, param = rest.rpartition(".")
            block = f"single_transformer_blocks.{i}."
            if rest in _SINGLE_NORMS:
                out[block + _SINGLE_NORMS[rest]] = value
            elif part in _SINGLE:
                out[f"{block}{_SINGLE[part]}.{param}"] = value
            elif part == "linear1":
                mlp = value.shape[0] - 3 * inner
                for name, piece in zip(_SINGLE_SPLIT, value.split([inner, inner, inner, mlp], dim=0), strict=True):
                    out[f"{block}{name}.{param}"] = piece
            else:
                raise ValueError(f"unknown Flux tensor {key!r}")
        else:
            raise ValueError(f"unknown Flux tensor {key!r}")
    return out


def to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers FluxTransformer2DModel tensors -> the original layout (for writing test files)."""
    top = {v: k for k, v in _TOP.items()}
    double = {v: k for k, v in _DOUBLE.items()}
    norms = {v: k for k, v in _NORMS.items()}
    single = {v: k for k, v in _SINGLE.items()}
    single_norms = {v: k for k, v in _SINGLE_NORMS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if stem in top:
            out[f"{top[stem]}.{param}"] = value
        elif stem == _FINAL_NORM[1]:
            out[f"{_FINAL_NORM[0]}.{param}"] = _swap_halves(value)
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key):
            i, rest = m[1], m[2]
            part, _, param = rest.rpartition(".")
            block = f"double_blocks.{i}."
            if rest in norms:
                out[block + norms[rest]] = value
            elif part in double:
                out[f"{block}{double[part]}.{param}"] = value
            else:
                fused = next((f for f, names in _QKV.items() if part == names[0]), None)
                if fused is not None:
                    pieces = [state[f"transformer_blocks.{i}.{name}.{param}"] for name in _QKV[fused]]
                    out[f"{block}{fused}.{param}"] = torch.cat(pieces, dim=0)
                elif not any(part in names[1:] for names in _QKV.values()):
                    raise ValueError(f"no original name for Flux tensor {key!r}")
        elif m := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", key):
            i, rest = m[1], m[2]
            part, _, param = rest.rpartition(".")
            block = f"single_blocks.{i}."
            if rest in single_norms:
                out[block + single_norms[rest]] = value
            elif part in single:
                out[f"{block}{single[part]}.{param}"] = value
            elif part == _SINGLE_SPLIT[0]:
                pieces = [state[f"single_transformer_blocks.{i}.{name}.{param}"] for name in _SINGLE_SPLIT]
                out[f"{block}linear1.{param}"] = torch.cat(pieces, dim=0)
            elif part not in _SINGLE_SPLIT:
                raise ValueError(f"no original name for Flux tensor {key!r}")
        else:
            raise ValueError(f"no original name for Flux tensor {key!r}")
    return out


def transformer_config(shapes: Mapping[str, tuple[int, ...]], base: Mapping[str, object]) -> dict[str, object]:
    """The FluxTransformer2DModel config for original-layout tensors: depth, widths and guidance from
    the tensors themselves, the rest (rotary axes) from the bundled `base` config."""
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    inner = shapes["img_in.weight"][0]

    def count(prefix: str) -> int:
        return 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith(prefix)), default=-1)

    return dict(base) | {
        "in_channels": shapes["img_in.weight"][1],
        "out_channels": shapes["final_layer.linear.weight"][0],
        "num_layers": count("double_blocks."),
        "num_single_layers": count("single_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": shapes["txt_in.weight"][1],
        "pooled_projection_dim": shapes["vector_in.in_layer.weight"][1],
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
    }
