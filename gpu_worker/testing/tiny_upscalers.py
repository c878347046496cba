"""Random-weight upscalers in the layouts people's files have, for tests and demos: the original
ESRGAN `model.N…` names (4x-UltraSharp and most community models), Real-ESRGAN's names under
`params_ema` (RealESRGAN_x4plus, x2plus with its pixel unshuffle) and the compact SRVGGNet
(realesr-general-x4v3). `.pth` files are written as torch.save writes them; `.safetensors` too."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from common.safetensors_writer import temp_path
from common.upscaler_detection import UpscalerKind
from gpu_worker.save import save_atomically
from gpu_worker.upscaler_nets import build_network

LAYOUTS = ("esrgan", "realesrgan", "compact")


def tiny_kind(layout: str, scale: int, filters: int = 8, blocks: int = 1) -> UpscalerKind:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
    if scale not in (1, 2, 4, 8):
        raise ValueError("scale must be 1, 2, 4 or 8")
    if layout == "compact":
        return UpscalerKind("compact", "compact", scale, 3, 3, filters, blocks, 0, 0, 1)
    # Real-ESRGAN reaches ×2 and ×1 with its four-times network behind a pixel unshuffle.
    shuffle = 4 // scale if layout == "realesrgan" and scale < 4 else 1
    upconvs = int(math.log2(scale * shuffle))
    return UpscalerKind(
        "rrdb", layout, scale, 3 * shuffle**2, 3, filters, blocks, max(filters // 2, 4), upconvs, shuffle
    )


def esrgan_names(kind: UpscalerKind) -> dict[str, str]:
    """Real-ESRGAN's names → the original ESRGAN's (the layout `canonical_names` reads back)."""
    last = 3 * kind.upconvs + 4
    renamed = {"conv_first": "model.0", "conv_body": f"model.1.sub.{kind.num_blocks}", "conv_hr": f"model.{last - 2}"}
    renamed |= {"conv_last": f"model.{last}"} | {f"conv_up{i}": f"model.{3 * i}" for i in range(1, kind.upconvs + 1)}
    out = {}
    for name in build_network(kind).state_dict():
        layer, _, part = name.rpartition(".")
        if layer.startswith("body."):
            block, rdb, conv = layer.split(".")[1:]
            out[name] = f"model.1.sub.{block}.{rdb.upper()}.{conv}.0.{part}"
        else:
            out[name] = f"{renamed[layer]}.{part}"
    return out


def make_tiny_upscaler(out: Path, layout: str = "esrgan", scale: int = 4, seed: int = 0) -> Path:
    kind = tiny_kind(layout, scale)
    torch.manual_seed(seed)
    network = build_network(kind)
    if kind.arch == "rrdb":  # a random trunk gives out almost nothing: spread it around mid-grey
        network.conv_last.weight.data.mul_(10)
        network.conv_last.bias.data.fill_(0.5)
    state = {k: v.contiguous() for k, v in network.state_dict().items()}
    if layout == "esrgan":
        names = esrgan_names(kind)
        state = {names[k]: v for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".safetensors":
        return save_atomically(state, out, {"easel.tiny": f"{layout} {scale}x seed {seed}"}, temp_path(out))
    if out.suffix.lower() not in (".pth", ".pt"):
        raise ValueError("the file name must end in .pth or .safetensors")
    root = {"params_ema": state} if layout == "realesrgan" else state
    temp = temp_path(out)
    try:
        torch.save(root, temp)
        temp.replace(out)
    finally:
        temp.unlink(missing_ok=True)
    return out
