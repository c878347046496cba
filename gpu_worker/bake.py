"""Bake LoRAs into a checkpoint: the checkpoint's own tensors, each LoRA's change added where it applies.

What A1111's SuperMerger ("merge LoRA to checkpoint") does, computed the way generation applies them:
the LoRAs are loaded into the pipeline with PEFT at their strengths (gpu_worker/loras.py), and each
adapted layer's change (`get_delta_weight`: up × down × alpha/rank × strength) is added to the
matching tensor of the original file, in its single-file (LDM) name. Everything else in the file is
copied untouched (EMA weights and all), in its own dtype. The result is written to a temporary file
and renamed into place, so a failure leaves nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from common.protocol import BakeOrder
from gpu_worker.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm
from gpu_worker.loader import load_pipeline
from gpu_worker.loras import apply_loras
from gpu_worker.save import save_atomically

# Where each text encoder lies in a single file: (prefix, OpenCLIP layout?)
_TEXT_ENCODERS = {
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", False)},
    "sd2": {"text_encoder": ("cond_stage_model.model.", True)},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", False),
        "text_encoder_2": ("conditioner.embedders.1.model.", True),
    },
}
_QKV = re.compile(r"(?:text_model\.)?encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


class BakeError(Exception):
    """The bake cannot be done; the message says why in one line."""


def _targets(component: str, key: str, family: str, unet_config) -> tuple[str, int | None]:
    """The single-file name of a diffusers weight, and for OpenCLIP's fused q/k/v which third of it."""
    probe = {key: torch.empty(0, device="cpu")}
    if component == "unet":
        return next(iter(unet_to_ldm(probe, unet_config))), None
    prefix, open_clip = _TEXT_ENCODERS[family][component]
    if not open_clip:
        return next(iter(clip_to_ldm(probe, prefix))), None
    if m := _QKV.fullmatch(key):
        return f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", "qkv".index(m[2])
    return next(iter(open_clip_to_ldm(probe, prefix))), None


def run_bake(order: BakeOrder, progress: Callable[[int, int], None] | None = None) -> int:
    """Write the baked checkpoint; returns how many tensors changed."""
    family = order.load.family
    loaded = load_pipeline(order.load, "cpu", torch.float32)  # the changes in full precision, added once
    apply_loras(loaded, order.loras)
    pipe = loaded.pipeline
    with safe_open(order.load.path, "pt") as f:
        metadata = dict(f.metadata() or {})
        state = {key: f.get_tensor(key) for key in f.keys()}
    layers = [
        (component, name, layer)
        for component in ("unet", *_TEXT_ENCODERS[family])
        for name, layer in getattr(pipe, component).named_modules()
        if isinstance(layer, LoraLayer)
    ]
    if not layers:
        raise BakeError("none of the LoRAs has a layer that matches this checkpoint")
    for done, (component, name, layer) in enumerate(layers, start=1):
        delta = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a in layer.lora_A)
        target, third = _targets(component, f"{name}.weight", family, pipe.unet.config)
        if target not in state and target.replace("text_model.", "", 1) in state:  # older SD1 files
            target = target.replace("text_model.", "", 1)
        if target not in state:
            raise BakeError(f"the checkpoint has no tensor {target} for the LoRA layer {name}")
        original = state[target]
        updated = original.float()
        if third is None:
            updated = updated + delta.reshape(original.shape)
        else:
            rows = original.shape[0] // 3
            updated[third * rows : (third + 1) * rows] += delta.reshape(rows, *original.shape[1:])
        state[target] = updated.to(original.dtype).contiguous()
        if progress is not None:
            progress(done, len(layers))
    save_atomically(state, Path(order.out), metadata | order.metadata, Path(order.temp))
    return len(layers)
