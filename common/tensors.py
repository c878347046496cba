"""Tensor descriptors shared by the safetensors and pickle readers (no torch needed)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Bytes per element for every dtype the safetensors format defines that we accept.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
# ggml's block-quantised types (a GGUF file's): values per block and bytes per block (ggml.c
# `type_traits`, the `gguf` package's GGML_QUANT_SIZES). A row holds a whole number of blocks.
GGML_BLOCKS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34), "Q8_1": (32, 40),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
    "Q8_K": (256, 292), "IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98), "IQ1_S": (256, 50),
    "IQ4_NL": (32, 18), "IQ3_S": (256, 110), "IQ2_S": (256, 82), "IQ4_XS": (256, 136), "IQ1_M": (256, 56),
    "TQ1_0": (256, 54), "TQ2_0": (256, 66), "MXFP4": (32, 17),
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    """Name, dtype and shape of one tensor; where it lies is format-specific."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.dtype in GGML_BLOCKS:
            block, size = GGML_BLOCKS[self.dtype]
            return self.numel // block * size
        return self.numel * DTYPE_SIZES[self.dtype]


# ComfyUI's quantised files (comfy/ops.py) keep, beside each fp8 matrix, its per-tensor scale: the
# first format's `<layer>.scale_weight` (with a `scaled_fp8` marker tensor), the mixed-precision
# format's `<layer>.weight_scale` (with a `comfy_quant` note); NVFP4 adds `<layer>.weight_scale_2`.
FP8_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
QUANTISATION_NOTES = (".scale_input", ".input_scale", ".comfy_quant")
NVFP4_SUFFIX = ".weight_scale_2"


def quantisation(names: list[str] | tuple[str, ...] | set[str]) -> str:
    """How a file's weights are quantised, as a person reads it ("" when they are not, or plainly fp8)."""
    if any(name.endswith(NVFP4_SUFFIX) for name in names):
        return "NVFP4 (4-bit with block scales, for Blackwell cards)"
    if any(name.endswith(FP8_SCALE_SUFFIXES) for name in names):
        return "scaled fp8 (ComfyUI's): each matrix fp8 times its scale, widened as it is read"
    return ""


def quantisation_note(name: str) -> bool:
    """A tensor a quantised file keeps beside the model's own: a scale, an input scale, a format note."""
    return name.endswith(FP8_SCALE_SUFFIXES + QUANTISATION_NOTES) or name.rsplit(".", 1)[-1] == "scaled_fp8"
