"""Carry out a merge order: read, combine in float32, cast, write, in fixed-size chunks.

The bot plans and checks the merge (bot/checkpoints/merge_plan.py) and hands over a MergeOrder:
every output tensor with the byte offsets of its sources. This process neither parses a header nor
plans again; it only reads, combines and writes.

Every tensor is streamed in chunks of CHUNK_ELEMENTS through buffers allocated once, read with
positioned reads (not memory-mapped: a mapping would count every page touched against this
process). So memory stays at a few chunks whatever the model's size, and no fresh memory is
faulted in per tensor. Output goes to a temporary file, renamed into place when complete.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from common.protocol import MergeOrder, MergeSource, MergeStep
from common.safetensors_writer import write_safetensors
from common.tensors import DTYPE_SIZES, TensorInfo

CHUNK_ELEMENTS = 1 << 22  # 4 M elements: 16 MB per float32 work buffer

TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,  # Flux's fp8 releases: combined in float32 like the rest, stored back as fp8
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class Inputs:
    """Positioned reads from the merge's input files into a caller's buffer."""

    def __init__(self, paths: dict[str, str]) -> None:
        self._fds: dict[str, int] = {}
        try:
            for role, path in paths.items():
                self._fds[role] = os.open(path, os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    def read(self, source: MergeSource, start: int, count: int, buffer: torch.Tensor) -> torch.Tensor:
        """Elements [start, start + count) of `source`, typed, in `buffer` (a uint8 tensor)."""
        size = DTYPE_SIZES[source.dtype]
        raw = buffer[: count * size]
        if count:
            os.preadv(self._fds[source.role], [raw.numpy()], source.offset + start * size)
        return raw.view(TORCH_DTYPES[source.dtype])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class Buffers:
    """Scratch space reused for every chunk of every tensor."""

    def __init__(self) -> None:
        raw = CHUNK_ELEMENTS * 8  # room for the widest dtype
        cpu = torch.device("cpu")  # merging streams files through RAM, never the GPU
        self.raw = {role: torch.empty(raw, dtype=torch.uint8, device=cpu) for role in ("a", "b", "c", "out")}
        self.fa = torch.empty(CHUNK_ELEMENTS, dtype=torch.float32, device=cpu)
        self.fb = torch.empty(CHUNK_ELEMENTS, dtype=torch.float32, device=cpu)
        self.fc = torch.empty(CHUNK_ELEMENTS, dtype=torch.float32, device=cpu)


def run_merge(order: MergeOrder, progress: Callable[[int, int], None] | None = None) -> None:
    inputs = Inputs(order.inputs)
    try:
        merger = _Merger(inputs, order.multiplier)
        outputs = {step.name: step for step in order.steps}
        done = 0

        def produce(info: TensorInfo) -> Iterator[memoryview]:
            nonlocal done
            yield from merger.chunks(outputs[info.name])
            done += 1
            if progress is not None:
                progress(done, len(order.steps))

        tensors = [TensorInfo(step.name, step.dtype, step.shape) for step in order.steps]
        write_safetensors(Path(order.out), tensors, produce, order.metadata, temp=Path(order.temp))
    finally:
        inputs.close()


class _Merger:
    def __init__(self, inputs: Inputs, multiplier: float) -> None:
        self.inputs = inputs
        self.m = multiplier
        self.buf = Buffers()

    def chunks(self, t: MergeStep) -> Iterator[memoryview]:
        if t.partial:  # a small UNet input conv: merged whole, channel slice by channel slice
            yield self._partial(t)
            return
        total = math.prod(t.shape)
        for start in range(0, total, CHUNK_ELEMENTS):
            yield self._chunk(t, start, min(CHUNK_ELEMENTS, total - start))
        if total == 0:
            yield memoryview(b"")

    def _chunk(self, t: MergeStep, start: int, n: int) -> memoryview:
        buf = self.buf
        source = self.inputs.read(t.sources[0], start, n, buf.raw["a"])
        if t.op in ("weighted_sum", "add_difference"):
            fa = buf.fa[:n]
            fa.copy_(source)
            fb = buf.fb[:n]
            fb.copy_(self.inputs.read(t.sources[1], start, n, buf.raw["b"]))
            if t.op == "weighted_sum":
                fa.mul_(1 - self.m).add_(fb, alpha=self.m)
            else:
                fb.sub_(buf.fc[:n].copy_(self.inputs.read(t.sources[2], start, n, buf.raw["c"])))
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

    def _partial(self, t: MergeStep) -> memoryview:
        first, second = t.sources[0], t.sources[1]
        a = self.inputs.read(first, 0, math.prod(first.shape), self.buf.raw["a"]).reshape(first.shape).float()
        count = math.prod(second.shape)
        b = self.inputs.read(second, 0, count, self.buf.raw["b"]).reshape(second.shape).float()
        if t.op == "weighted_sum":
            a[:, 0:4] = (1 - self.m) * a[:, 0:4] + self.m * b
        else:
            third = t.sources[2]
            c = self.inputs.read(third, 0, count, self.buf.raw["c"]).reshape(third.shape).float()
            a[:, 0:4] = a[:, 0:4] + self.m * (b - c)
        return self._emit(a.reshape(-1), t.dtype, math.prod(t.shape))


def peak_rss_bytes() -> int | None:
    """This process's own high-water RSS (VmHWM), which exec resets, unlike getrusage's maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
