"""A tiny file's transformer quantised as the files people download are, for tests:

- `fp8-scaled` keeps each weight matrix in float8_e4m3fn beside its per-tensor scale (the largest
  magnitude over 448, e4m3fn's largest value), `<layer>.scale_weight`, with the `scaled_fp8` marker —
  ComfyUI's `…_fp8_scaled.safetensors` (comfy/ops.py).
- `gguf-q8_0` and `gguf-q4_k` write the transformer alone as a GGUF file, as city96's ComfyUI-GGUF
  files hold it (tools/convert.py): original tensor names without a prefix, `general.architecture`
  as its loader's list names the family, vectors and tensors of at most 1,024 values in F32, the
  matrices in Q8_0 or Q4_K (a matrix whose rows do not fill Q4_K's 256-value blocks in Q8_0, as
  llama.cpp's quantiser falls back). Q8_0 comes from the `gguf` package; it only reads K-quants,
  so Q4_K is made here (`q4_k`): a plain min/max fit of each 32-value sub-block, not llama.cpp's
  search for the best scales — a valid file, a little less faithful than theirs.

The weights are those of the plain file of the same seed, quantised; the text encoders and VAE of
an all-in-one file are left as they are (fp8-scaled) or refused (GGUF holds a transformer alone).
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

from common.bundled import TINY_FORMATS as FORMATS
from common.gguf_header import llama_cpp_names
from common.safetensors_writer import temp_path
from gpu_worker.save import save_atomically

E4M3_MAX = 448.0
_PARTS = ("text_encoders.", "vae.", "first_stage_model.")
_PREFIX = "model.diffusion_model."
# ComfyUI-GGUF's name for each family's transformer (loader.py IMG_ARCH_LIST): Chroma and FLUX.2 are
# read as Flux's kin (its list has no FLUX.2 of its own), Z-Image as Lumina 2's.
GGUF_ARCH = {"flux": "flux", "chroma": "flux", "sd3": "sd3", "z-image": "lumina2", "qwen-image": "qwen_image", "flux2": "flux"}
# Text encoders as city96's and llama.cpp's GGUF files hold them: under llama.cpp's names.
TEXT_ENCODER_ARCH = {"t5xxl": "t5encoder", "qwen3": "qwen3"}
_SMALL = 1024  # city96's QUANTIZATION_THRESHOLD: tensors this small stay in F32
_Q = gguf.GGMLQuantizationType


def quantise_file(path: Path, form: str, family: str = "flux", out: Path | None = None) -> Path:
    """`path` rewritten in `form` (FORMATS; "plain" leaves it as it is). A GGUF form writes the
    file's transformer as `family`'s to `out` (a .gguf name) and removes `path`."""
    if form not in FORMATS:
        raise ValueError(f"unknown format {form!r}; choose one of {', '.join(FORMATS)}")
    if form == "plain":
        return path
    with safe_open(str(path), framework="pt", device="cpu") as file:
        metadata = file.metadata() or {}
        state = {key: file.get_tensor(key) for key in file.keys()}
    if form.startswith("gguf-"):
        try:
            return _write_gguf(state, out or path.with_suffix(".gguf"), family, _Q.Q8_0 if form == "gguf-q8_0" else _Q.Q4_K)
        finally:
            path.unlink()
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


def _write_gguf(state: dict[str, torch.Tensor], path: Path, family: str, kind: gguf.GGMLQuantizationType) -> Path:
    if family == "sd3":  # SAI's file keeps its VAE beside the MMDiT; city96's GGUF holds the MMDiT alone
        state = {key: value for key, value in state.items() if not key.startswith("first_stage_model.")}
    if any(key.startswith(_PARTS) for key in state):
        raise ValueError("a GGUF file holds the transformer alone: give a transformer-only --arch (flux-transformer, z-image, …)")
    arch = GGUF_ARCH.get(family) or TEXT_ENCODER_ARCH.get(family)
    if arch is None:
        raise ValueError(f"GGUF files are written for the flow families ({', '.join(GGUF_ARCH)}) and T5/Qwen3, not {family}")
    names = {key: key for key in state}
    if family in TEXT_ENCODER_ARCH:
        if "shared.weight" in state:  # T5's token table, stored once (token_embd)
            state = {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
        names = llama_cpp_names(list(state), arch)
    tmp = temp_path(path)
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if kind == _Q.Q8_0 else gguf.LlamaFileType.MOSTLY_Q4_K_M)
    for key, tensor in state.items():
        values = tensor.to(torch.float32).numpy()
        name = names[key].removeprefix(_PREFIX)
        chosen = _type_for(values, kind)
        if chosen == _Q.Q4_K:
            writer.add_tensor(name, q4_k(values), raw_dtype=chosen)
        elif chosen == _Q.Q8_0:
            writer.add_tensor(name, gguf.quants.quantize(values, chosen), raw_dtype=chosen)
        else:
            writer.add_tensor(name, values.astype(np.float32 if chosen == _Q.F32 else np.float16))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _type_for(values: np.ndarray, wanted: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    if values.ndim == 1 or values.size <= _SMALL:
        return _Q.F32
    width = values.shape[-1]
    if wanted == _Q.Q4_K and width % 256 == 0:
        return _Q.Q4_K
    return _Q.Q8_0 if width % 32 == 0 else _Q.F16


def q4_k(values: np.ndarray) -> np.ndarray:
    """`values` (rows of a multiple of 256) in ggml's Q4_K blocks: per 256 values an fp16 scale `d`
    and min `dmin`, eight 6-bit sub-block scales and mins packed in 12 bytes, and 256 4-bit values;
    a value is d * scale_j * q - dmin * min_j (ggml-quants.c `dequantize_row_q4_K`)."""
    rows = values.shape
    blocks = values.astype(np.float32).reshape(-1, 8, 32)
    low = np.minimum(blocks.min(axis=2), 0.0)
    step = (blocks.max(axis=2) - low) / 15
    d = (step.max(axis=1) / 63).astype(np.float16)
    dmin = (-low.min(axis=1) / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    scales = np.ceil(np.divide(step, d32, out=np.zeros_like(step), where=d32 > 0)).clip(0, 63).astype(np.uint8)
    mins = np.ceil(np.divide(-low, dmin32, out=np.zeros_like(low), where=dmin32 > 0)).clip(0, 63).astype(np.uint8)
    size = (d32 * scales)[..., None]
    shift = (dmin32 * mins)[..., None]
    q = np.rint(np.divide(blocks + shift, size, out=np.zeros_like(blocks), where=size > 0)).clip(0, 15).astype(np.uint8)
    packed = np.empty((blocks.shape[0], 12), np.uint8)
    packed[:, 0:4] = scales[:, :4] | (scales[:, 4:] >> 4) << 6
    packed[:, 4:8] = mins[:, :4] | (mins[:, 4:] >> 4) << 6
    packed[:, 8:12] = (scales[:, 4:] & 15) | (mins[:, 4:] & 15) << 4
    nibbles = (q[:, 0::2, :] | q[:, 1::2, :] << 4).reshape(-1, 128)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, nibbles], axis=1)
    return out.reshape(*rows[:-1], rows[-1] // 256 * 144)
