"""Carry out a merge plan: read, combine in float32, cast, write, in fixed-size chunks.

Every tensor is streamed in chunks of CHUNK_ELEMENTS through buffers allocated once, read with
positioned reads (not memory-mapped: a mapping would count every page touched against this
process). So memory stays at a few chunks whatever the model's size, and no fresh memory is
faulted in per tensor. Output goes to a temporary file, renamed into place when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bot.checkpoints.merge_plan import MergePlan, PlannedTensor, plan_merge, vae_key
from bot.checkpoints.safetensors_header import SafetensorsHeader, read_header
from bot.checkpoints.safetensors_writer import write_safetensors
from bot.checkpoints.tensors import DTYPE_SIZES, TensorInfo

CHUNK_ELEMENTS = 1 << 22  # 4 M elements: 16 MB per float32 work buffer

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
    """Positioned reads of one input's tensors (or parts of them) into a caller's buffer."""

    def __init__(self, path: Path) -> None:
        self.header: SafetensorsHeader = read_header(path)
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, name: str, start: int, count: int, buffer: torch.Tensor) -> torch.Tensor:
        """Elements [start, start + count) of tensor `name`, typed, in `buffer` (a uint8 tensor)."""
        t = self.header.tensors[name]
        size = DTYPE_SIZES[t.dtype]
        raw = buffer[: count * size]
        if count:
            os.preadv(self._fd, [raw.numpy()], self.header.data_start + t.begin + start * size)
        return raw.view(TORCH_DTYPES[t.dtype])

    def close(self) -> None:
        os.close(self._fd)


class Buffers:
    """Scratch space reused for every chunk of every tensor."""

    def __init__(self) -> None:
        raw = CHUNK_ELEMENTS * 8  # room for the widest dtype
        self.raw = {role: torch.empty(raw, dtype=torch.uint8) for role in ("a", "b", "c", "out")}
        self.fa = torch.empty(CHUNK_ELEMENTS, dtype=torch.float32)
        self.fb = torch.empty(CHUNK_ELEMENTS, dtype=torch.float32)
        self.fc = torch.empty(CHUNK_ELEMENTS, dtype=torch.float32)


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
        merger = _Merger(readers, multiplier, {vae_key(k): k for k in header["vae"].tensors} if "vae" in header else {})
        done = 0

        def produce(info: TensorInfo) -> Iterator[memoryview]:
            nonlocal done
            assert isinstance(info, PlannedTensor)
            yield from merger.chunks(info)
            done += 1
            if progress is not None:
                progress(done, len(plan.tensors))

        write_safetensors(out, plan.tensors, produce, metadata, temp=temp)
        return plan
    finally:
        for reader in readers.values():
            reader.close()


class _Merger:
    def __init__(self, readers: dict[str, TensorReader], multiplier: float, vae_names: dict[str, str]) -> None:
        self.readers = readers
        self.m = multiplier
        self.vae_names = vae_names
        self.buf = Buffers()

    def chunks(self, t: PlannedTensor) -> Iterator[memoryview]:
        if t.partial:  # a small UNet input conv: merged whole, channel slice by channel slice
            yield self._partial(t)
            return
        total = t.numel
        for start in range(0, total, CHUNK_ELEMENTS):
            yield self._chunk(t, start, min(CHUNK_ELEMENTS, total - start))
        if total == 0:
            yield memoryview(b"")

    def _chunk(self, t: PlannedTensor, start: int, n: int) -> memoryview:
        buf = self.buf
        if t.op == "vae":
            source = self.readers["vae"].read(self.vae_names[t.name], start, n, buf.raw["a"])
        else:
            source = self.readers["a"].read(t.name, start, n, buf.raw["a"])
        if t.op in ("weighted_sum", "add_difference"):
            fa = buf.fa[:n]
            fa.copy_(source)
            fb = buf.fb[:n]
            fb.copy_(self.readers["b"].read(t.name, start, n, buf.raw["b"]))
            if t.op == "weighted_sum":
                fa.mul_(1 - self.m).add_(fb, alpha=self.m)
            else:
                fb.sub_(buf.fc[:n].copy_(self.readers["c"].read(t.name, start, n, buf.raw["c"])))
                fa.add_(fb, alpha=self.m)
            source = fa
        return self._emit(source, t.dtype, n)

    def _emit(self, values: torch.Tensor, dtype: str, n: int) -> memoryview:
        out_dtype = TORCH_DTYPES[dtype]
        if values.dtype != out_dtype:
            typed = self.buf.raw["out"][: n * DTYPE_SIZES[dtype]].view(out_dtype)
            typed.copy_(values)
            values = typed
        return memoryview(values.view(torch.uint8).numpy())

    def _partial(self, t: PlannedTensor) -> memoryview:
        a = self.readers["a"].read(t.name, 0, t.numel, self.buf.raw["a"]).reshape(t.shape).float()
        spec_b = self.readers["b"].header.tensors[t.name]
        b = self.readers["b"].read(t.name, 0, spec_b.numel, self.buf.raw["b"]).reshape(spec_b.shape).float()
        if t.op == "weighted_sum":
            a[:, 0:4] = (1 - self.m) * a[:, 0:4] + self.m * b
        else:
            c = self.readers["c"].read(t.name, 0, spec_b.numel, self.buf.raw["c"]).reshape(spec_b.shape).float()
            a[:, 0:4] = a[:, 0:4] + self.m * (b - c)
        return self._emit(a.reshape(-1), t.dtype, t.numel)


def peak_rss_bytes() -> int | None:
    """This process's own high-water RSS (VmHWM), which exec resets, unlike getrusage's maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
