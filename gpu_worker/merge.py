"""Carry out a merge plan tensor by tensor: read, combine in float32, cast, write.

Inputs are read with positioned reads into a buffer per tensor rather than memory-mapped, so the
process holds about one tensor of each input at a time (a mapping would count every page touched
against the process). Output goes to a temporary file the caller renames on success.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from bot.checkpoints.merge_plan import MergePlan, PlannedTensor, plan_merge, vae_key
from bot.checkpoints.safetensors_header import SafetensorsHeader, read_header
from bot.checkpoints.safetensors_writer import write_safetensors
from bot.checkpoints.tensors import TensorInfo

TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorReader:
    def __init__(self, path: Path) -> None:
        self.header: SafetensorsHeader = read_header(path)
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, name: str) -> torch.Tensor:
        t = self.header.tensors[name]
        buffer = bytearray(t.nbytes)
        if t.nbytes:
            os.preadv(self._fd, [buffer], self.header.data_start + t.begin)
            return torch.frombuffer(buffer, dtype=TORCH_DTYPES[t.dtype]).reshape(t.shape)
        return torch.empty(t.shape, dtype=TORCH_DTYPES[t.dtype])

    def close(self) -> None:
        os.close(self._fd)


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def run_merge(
    method: str,
    multiplier: float,
    primary: Path,
    out: Path,
    metadata: dict[str, str],
    *,
    temp: Path | None = None,
    secondary: Path | None = None,
    tertiary: Path | None = None,
    vae: Path | None = None,
    fp16: bool = False,
    prune: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> MergePlan:
    readers = {
        role: TensorReader(p) for role, p in (("a", primary), ("b", secondary), ("c", tertiary), ("vae", vae)) if p
    }
    try:
        header = {role: r.header for role, r in readers.items()}
        plan = plan_merge(
            method,
            multiplier,
            header["a"],
            header.get("b"),
            header.get("c"),
            vae=header.get("vae"),
            fp16=fp16,
            prune=prune,
        )
        vae_names = {vae_key(k): k for k in header["vae"].tensors} if "vae" in header else {}
        done = 0

        def produce(info: TensorInfo) -> bytes:
            nonlocal done
            assert isinstance(info, PlannedTensor)
            result = _combine(info, readers, multiplier, vae_names)
            done += 1
            if progress is not None:
                progress(done, len(plan.tensors))
            return tensor_bytes(result.to(TORCH_DTYPES[info.dtype]))

        write_safetensors(out, plan.tensors, produce, metadata, temp=temp)
        return plan
    finally:
        for reader in readers.values():
            reader.close()


def _combine(t: PlannedTensor, readers: dict[str, TensorReader], m: float, vae_names: dict[str, str]) -> torch.Tensor:
    if t.op == "vae":
        return readers["vae"].read(vae_names[t.name])
    a = readers["a"].read(t.name)
    if t.op == "copy":
        return a
    a = a.float()
    b = readers["b"].read(t.name).float()
    if t.op == "weighted_sum":

        def merged(x: torch.Tensor) -> torch.Tensor:
            return (1 - m) * x + m * b
    else:
        difference = b - readers["c"].read(t.name).float()

        def merged(x: torch.Tensor) -> torch.Tensor:
            return x + m * difference

    if t.partial:  # inpainting / pix2pix A: only the 4 channels both models have
        a[:, 0:4] = merged(a[:, 0:4])
        return a
    return merged(a)
