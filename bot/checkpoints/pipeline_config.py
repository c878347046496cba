"""Which bundled diffusers config folder (common/configs/<id>) loads a checkpoint.

Chosen from the architecture and the UNet's input width: 320 for the real SD1/SD2/SDXL models,
32 for Easel's tiny test checkpoints. An inpainting checkpoint (9-channel UNet) gets its base's folder
with `+inpainting`: the worker loads it as that base's inpainting pipeline; an EDM one (Playground
v2.5) with `+edm`: its EDM schedule and latent statistics. The worker never guesses,
and never asks the hub.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.checkpoints.architecture import FLUX_PREFIX, UNET_IN, Architecture
from common.tensors import TensorInfo

CONFIGS: dict[tuple[str, int], str] = {
    ("sd1", 320): "sd1",
    ("sd2", 320): "sd2",
    ("sdxl", 320): "sdxl",
    ("sd1", 32): "tiny-sd1",
    ("sd1", 40): "demo-sd1",  # Easel's trained demo model (tools/train_demo_model.py)
    ("sd2", 32): "tiny-sd2",
    ("sdxl", 32): "tiny-sdxl",
    ("flux", 3072): "flux",
    ("flux", 32): "tiny-flux",
    ("sd3", 1536): "sd3",  # SD3 Medium, SD3.5 Medium
    ("sd3", 2432): "sd3",  # SD3.5 Large
    ("sd3", 32): "tiny-sd3",
    ("chroma", 3072): "flux",  # FLUX.1's T5, tokenizer, VAE and schedule; its transformer's config from the file
    ("chroma", 32): "tiny-flux",
    ("qwen-image", 3072): "qwen-image",
    ("qwen-image", 32): "tiny-qwen-image",
    ("z-image", 3840): "z-image",
    ("z-image", 64): "tiny-z-image",
    ("flux2", 3072): "flux2-klein",  # [klein] 4B
    ("flux2", 4096): "flux2-klein",  # [klein] 9B: its depth and widths from the file
    ("flux2", 32): "tiny-flux2-klein",
}


# A transformer family's patch embedder: its output is the transformer's width.
TRANSFORMER_EMBEDDERS = {
    "flux": "img_in.weight",
    "chroma": "img_in.weight",
    "sd3": "x_embedder.proj.weight",
    "z-image": "x_embedder.weight",
    "qwen-image": "img_in.weight",
    "flux2": "img_in.weight",
}


def choose_pipeline_config(arch: Architecture, tensors: Mapping[str, TensorInfo]) -> tuple[str | None, str]:
    """(config id, reason when there is none)."""
    if not arch.runnable:
        return None, arch.reason
    if arch.family in TRANSFORMER_EMBEDDERS:  # a transformer: its hidden width (the patch embedder's output) picks the folder
        prefix = FLUX_PREFIX if arch.decided_by.startswith(FLUX_PREFIX) else ""
        embedder = TRANSFORMER_EMBEDDERS[arch.family]
        width = tensors[prefix + embedder].shape[0]
        config = CONFIGS.get((arch.family, width))
        if config is None:
            return None, f"no bundled configuration for a {arch.label} transformer {width} wide"
        return config, ""
    width = tensors[UNET_IN].shape[0]
    config = CONFIGS.get((arch.family, width))
    if config is None:
        return None, f"no bundled configuration for a {arch.label} UNet {width} channels wide"
    return (f"{config}+{arch.variant}" if arch.variant in ("inpainting", "edm") else config), ""
