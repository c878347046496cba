"""Random-weight annotator files in their real layouts (lllyasviel/Annotators' ControlNetHED.pth and
sk_model.pth), for tests: the networks have fixed widths, so these are as large as the released
files (HED 59 MB in float32, lineart 17 MB, OpenPose's body model 209 MB); Depth Anything V2's
is sized by its tensors, so its tiny one is 1 MB. Written as torch.save writes a state dict (a pickle, as released)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gpu_worker.annotators import NETWORKS, LineartAnimeGenerator
from gpu_worker.depth import DepthAnythingV2
from gpu_worker.midas import MidasHybrid
from gpu_worker.pidinet import PiDiNet

# The networks sized by their files, made tiny.
TINY: dict[str, Callable[[], torch.nn.Module]] = {
    # Depth Anything: width 64, twelve blocks (ViT-S's layout)
    "depth_anything_v2": lambda: DepthAnythingV2(64, 12, 16, (8, 16, 32, 64), 2),
    "depth_anything": lambda: DepthAnythingV2(64, 12, 16, (8, 16, 32, 64), 1),
    "lineart_anime": lambda: LineartAnimeGenerator(4),  # 4 channels wide, not 64
    "pidinet": lambda: PiDiNet(8, 8),  # the released one is 60 wide, its dilations 24
    # a DPT-Hybrid a hundredth of the size: GroupNorm's 32 groups set the least widths
    "midas": lambda: MidasHybrid(32, (128, 128, 128), (1, 1, 2), 64, 6, 128, 4, 32, None),
}


def make_tiny_annotator(kind: str, out: Path, seed: int = 0) -> Path:
    if kind not in NETWORKS:
        raise ValueError(f"no annotator kind {kind!r}; choose one of {', '.join(NETWORKS)}")
    torch.manual_seed(seed)
    network = TINY[kind]() if kind in TINY else NETWORKS[kind]({})  # the others have a fixed size
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in network.state_dict().items()}
    if out.suffix.lower() == ".safetensors":
        import safetensors.torch

        safetensors.torch.save_file(state, str(out))
    else:
        torch.save(state, out)
    return out
