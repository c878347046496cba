"""SD3 / SD3.5 transformer (MMDiT) weights: Stability AI's original key layout <-> diffusers'
SD3Transformer2DModel.

The original layout is what SAI's single files carry (sd3.5_large.safetensors, under
`model.diffusion_model.`). The names and reorderings follow SAI's sd3_impls.py (MMDiT) and diffusers'
single_file_utils.py (convert_sd3_transformer_checkpoint_to_diffusers):
- each block fuses q, k and v (`x_block.attn.qkv`, `context_block.attn.qkv`, SD3.5 Medium's second
  attention `x_block.attn2.qkv`);
- the last block's context stream only feeds attention (no output projection, no MLP), and its
  AdaLayerNorm, like the final one, stores (shift, scale) where diffusers stores (scale, shift).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
_BLOCK = {
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
    "x_block.attn.proj": "attn.to_out.0",
    "context_block.attn.proj": "attn.to_add_out",
    "x_block.attn2.ln_q": "attn2.norm_q",
    "x_block.attn2.ln_k": "attn2.norm_k",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
}
_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
_FINAL_NORM = ("final_layer.adaLN_modulation.1", "norm_out.linear")
_LAST_CONTEXT_NORM = "context_block.adaLN_modulation.1"


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _depth(keys, prefix: str) -> int:
    return 1 + max((int(k.split(".")[1]) for k in keys if k.startswith(prefix)), default=-1)


def to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-layout SD3 transformer tensors (no prefix) -> diffusers names. Unknown keys raise."""
    last = _depth(state, "joint_blocks.") - 1
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if key == "pos_embed":
            out["pos_embed.pos_embed"] = value
        elif stem in _TOP:
            out[f"{_TOP[stem]}.{param}"] = value
        elif stem == _FINAL_NORM[0]:
            out[f"{_FINAL_NORM[1]}.{param}"] = _swap_halves(value)
        elif m := re.fullmatch(r"joint_blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            i, part, param = int(m[1]), m[2], m[3]
            block = f"transformer_blocks.{i}."
            if part in _QKV:
                for name, piece in zip(_QKV[part], value.chunk(3, dim=0), strict=True):
                    out[f"{block}{name}.{param}"] = piece
            elif part in _BLOCK:
                swap = i == last and part == _LAST_CONTEXT_NORM
                out[f"{block}{_BLOCK[part]}.{param}"] = _swap_halves(value) if swap else value
            else:
                raise ValueError(f"unknown SD3 tensor {key!r}")
        else:
            raise ValueError(f"unknown SD3 tensor {key!r}")
    return out


def to_original(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers SD3Transformer2DModel tensors -> the original layout (for writing test files)."""
    top = {v: k for k, v in _TOP.items()}
    block_names = {v: k for k, v in _BLOCK.items()}
    last = _depth(state, "transformer_blocks.") - 1
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if key == "pos_embed.pos_embed":
            out["pos_embed"] = value
        elif stem in top:
            out[f"{top[stem]}.{param}"] = value
        elif stem == _FINAL_NORM[1]:
            out[f"{_FINAL_NORM[0]}.{param}"] = _swap_halves(value)
        elif m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            i, part, param = int(m[1]), m[2], m[3]
            block = f"joint_blocks.{i}."
            fused = next((f for f, names in _QKV.items() if part == names[0]), None)
            if fused is not None:
                pieces = [state[f"transformer_blocks.{i}.{name}.{param}"] for name in _QKV[fused]]
                out[f"{block}{fused}.{param}"] = torch.cat(pieces, dim=0)
            elif part in block_names:
                original = block_names[part]
                swap = i == last and original == _LAST_CONTEXT_NORM
                out[f"{block}{original}.{param}"] = _swap_halves(value) if swap else value
            elif not any(part in names[1:] for names in _QKV.values()):
                raise ValueError(f"no original name for SD3 tensor {key!r}")
        else:
            raise ValueError(f"no original name for SD3 tensor {key!r}")
    return out


def transformer_config(shapes: Mapping[str, tuple[int, ...]], base: Mapping[str, object]) -> dict[str, object]:
    """The SD3Transformer2DModel config for original-layout tensors: depth, widths, patch size,
    position grid, QK norm and SD3.5 Medium's dual-attention blocks from the tensors; the head
    width from the bundled `base` config (64 in every SD3 release)."""
    hidden, channels, patch, _ = shapes["x_embedder.proj.weight"]
    head_dim = int(base["attention_head_dim"])  # type: ignore[call-overload]
    dual = sorted({int(k.split(".")[1]) for k in shapes if ".x_block.attn2." in k})
    return dict(base) | {
        "num_layers": _depth(shapes, "joint_blocks."),
        "patch_size": patch,
        "in_channels": channels,
        "out_channels": shapes["final_layer.linear.weight"][0] // (patch * patch),
        "num_attention_heads": hidden // head_dim,
        "caption_projection_dim": shapes["context_embedder.weight"][0],
        "joint_attention_dim": shapes["context_embedder.weight"][1],
        "pooled_projection_dim": shapes["y_embedder.mlp.0.weight"][1],
        "pos_embed_max_size": math.isqrt(shapes["pos_embed"][1]),
        "dual_attention_layers": dual,
        "qk_norm": "rms_norm" if "joint_blocks.0.x_block.attn.ln_q.weight" in shapes else None,
    }
