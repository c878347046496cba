"""A tiny file's transformer quantised as ComfyUI quantises the files people download, for tests:
`fp8-scaled` keeps each weight matrix in float8_e4m3fn beside its per-tensor scale (the largest
magnitude over 448, e4m3fn's largest value), `<layer>.scale_weight`, with the `scaled_fp8` marker —
ComfyUI's `…_fp8_scaled.safetensors` (comfy/ops.py). The weights are those of the plain file of the
same seed, quantised; the text encoders and VAE of an all-in-one file are left as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from common.safetensors_writer import temp_path
from gpu_worker.save import save_atomically

FORMATS = ("plain", "fp8-scaled")
E4M3_MAX = 448.0
_PARTS = ("text_encoders.", "vae.", "first_stage_model.")


def quantise_file(path: Path, form: str) -> Path:
    """`path` rewritten in `form` (FORMATS; "plain" leaves it as it is)."""
    if form not in FORMATS:
        raise ValueError(f"unknown format {form!r}; choose one of {', '.join(FORMATS)}")
    if form == "plain":
        return path
    with safe_open(str(path), framework="pt", device="cpu") as file:
        metadata = file.metadata() or {}
        state = {key: file.get_tensor(key) for key in file.keys()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith(".weight") and tensor.ndim == 2 and not key.startswith(_PARTS):
            weight = tensor.to(torch.float32)
            scale = (weight.abs().max() / E4M3_MAX).clamp(min=1e-12)
            out[key] = (weight / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(())
        else:
            out[key] = tensor
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)  # the marker ComfyUI's files carry
    metadata = metadata | {"easel.format": form}
    return save_atomically({k: v.contiguous() for k, v in out.items()}, path, metadata, temp_path(path))
