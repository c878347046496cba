"""GGUF transformers (city96's ComfyUI-GGUF files): read, and kept quantised in memory.

The point of a `…-Q4_K.gguf` file is memory: its matrices stay in their ggml blocks (a quarter of
bf16's bytes for Q4_K, a little over half for Q8_0) and each linear layer widens its weight to the
compute dtype only while it runs, as ComfyUI-GGUF and diffusers' GGUF quantiser do. The blocks are
held in diffusers' GGUFParameter (a uint8 tensor that knows its ggml type) and the layers become
diffusers' GGUFLinear, whose forward dequantises (diffusers/quantizers/gguf/utils.py: the
dequantisers are theirs). Vectors and small tensors (F32, F16, BF16) are read as plain tensors in
the compute dtype.

The header was validated by common/gguf_header.py (bounded, every tensor inside the file); tensors
are read one at a time from their offsets, never through the `gguf` package's memory map of the
whole file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import gguf
import torch
from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter, dequantize_gguf_tensor

from common.errors import CheckpointFileError
from common.gguf_header import UNQUANTISED, GGUFTensor, original_names, read_gguf_header, unreadable_types
from common.tensors import GGML_BLOCKS

_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class GGUFFile:
    """One GGUF file, read a tensor at a time: quantised tensors as GGUFParameters (their blocks,
    untouched), the rest cast to `dtype`. The same reading interface as model_parts.TensorFile."""

    def __init__(self, path: Path, dtype: torch.dtype, error: type[Exception]) -> None:
        self.path = path
        self.dtype = dtype
        try:
            header = read_gguf_header(path)
        except CheckpointFileError as e:
            raise error(f"{path.name}: {e}") from None
        unreadable = unreadable_types(header.tensors)
        if unreadable:
            raise error(f"{path.name} holds {', '.join(unreadable)} weights, which cannot be widened here; use its Q8_0, Q6_K or Q4_K file")
        try:
            self._tensors: dict[str, GGUFTensor] = original_names(header)
        except CheckpointFileError as e:
            raise error(f"{path.name}: {e}") from None
        self.keys = list(self._tensors)

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.keys)

    def tensors(self, prefix: str = "", keep: Callable[[str], bool] = lambda _: True) -> dict[str, torch.Tensor]:
        out = {}
        with open(self.path, "rb") as f:
            for key in self.keys:
                if key.startswith(prefix) and keep(key[len(prefix) :]):
                    out[key[len(prefix) :]] = self._read(f, self._tensors[key])
        return out

    def _read(self, f: BinaryIO, t: GGUFTensor) -> torch.Tensor:
        f.seek(t.offset)
        raw = bytearray(f.read(t.nbytes))  # memory of its own, aligned for the kernels
        if t.dtype in UNQUANTISED:
            return torch.frombuffer(raw, dtype=_PLAIN[t.dtype]).reshape(t.shape).to(self.dtype)
        block, size = GGML_BLOCKS[t.dtype]
        blocks = torch.frombuffer(raw, dtype=torch.uint8).reshape(*t.shape[:-1], t.shape[-1] // block * size)
        return GGUFParameter(blocks, quant_type=gguf.GGMLQuantizationType[t.dtype])


def logical_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """A weight's shape as its layer sees it: a quantised one's blocks hold more values than bytes."""
    return tuple(getattr(tensor, "quant_shape", tensor.shape))


def is_quantised(tensor: torch.Tensor | None) -> bool:
    return isinstance(tensor, GGUFParameter)


def quantised_layers(model: torch.nn.Module, state: dict[str, torch.Tensor], compute_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each linear layer whose weight in `state` is quantised becomes a GGUFLinear (built on the
    meta device, its weight to come from `state`), which widens that weight to `compute_dtype` as
    it runs. A quantised tensor of any other layer (an embedding table, a T5 file's) is widened
    now: returns `state` with those widened."""
    # Layers a model casts its input to the weight's dtype for (transformers' T5 `wo`, which it names
    # in `_keep_in_fp32_modules`) take a widened weight: a uint8 one would cast the input to bytes.
    sensitive = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    linear = set()
    for name, module in list(model.named_modules()):
        if name.rpartition(".")[2] in sensitive:
            continue
        if type(module) is torch.nn.Linear and is_quantised(state.get(f"{name}.weight")):
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            with torch.device("meta"):
                layer = GGUFLinear(module.in_features, module.out_features, module.bias is not None, compute_dtype=compute_dtype)
            setattr(parent, leaf, layer.requires_grad_(False))
            linear.add(f"{name}.weight")
    widened: dict[int, torch.Tensor] = {}  # a table stored once under two names (T5's) widened once
    out = {}
    for key, value in state.items():
        if is_quantised(value) and key not in linear:
            if id(value) not in widened:
                widened[id(value)] = dequantize_gguf_tensor(value).to(compute_dtype)
            value = widened[id(value)]
        out[key] = value
    return out


def assign_quantised(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Puts `state`'s quantised weights into their layers as they are (load_state_dict would compare
    their byte shapes with the layers' and cast them); returns the rest, for load_state_dict."""
    rest = {}
    for key, tensor in state.items():
        if is_quantised(tensor):
            owner, _, leaf = key.rpartition(".")
            model.get_submodule(owner)._parameters[leaf] = tensor
        else:
            rest[key] = tensor
    return rest
