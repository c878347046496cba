"""Writing a safetensors file so that it is either all there or not there at all."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_atomically(tensors: dict[str, torch.Tensor], out: Path, metadata: dict[str, str], temp: Path) -> Path:
    """Write `tensors` to `temp`, then rename it to `out`; a failure leaves neither behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file(tensors, str(temp), metadata=metadata)
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    return out
