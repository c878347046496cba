"""What a VAE file holds, from its tensors' names and shapes alone (no torch).

A VAE file is the autoencoder of a checkpoint on its own: the original (LDM) layout
(`encoder.down.0.block.0…`, `decoder.conv_in.weight`, as `vae-ft-mse-840000-ema-pruned` and
`sdxl_vae.safetensors` are), sometimes under the checkpoint's `first_stage_model.` prefix, or
diffusers' layout (`decoder.up_blocks.…`). Its latent width says which models it can serve: 4
channels for SD1, SD2 and SDXL (their VAEs share one shape), 16 for SD3 and Flux.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

VAE_FOLDERS = ("VAE",)  # A1111's models/VAE; ComfyUI's models/vae (folders match in any case)
# ComfyUI's models/text_encoders (and its older models/clip): bot/components/text_encoders.py
TEXT_ENCODER_FOLDERS = ("text_encoders", "clip")
PREFIXES = ("first_stage_model.", "vae.")
SD_LATENT_CHANNELS = 4


class VaeFileError(ValueError):
    """Not a VAE we can use; the message says why."""


@dataclass(frozen=True)
class VaeKind:
    layout: str  # ldm | diffusers | wan (Wan 2.1's video VAE, either key layout: Qwen-Image's)
    prefix: str  # what the keys start with ("" or first_stage_model.)
    latent_channels: int

    @property
    def label(self) -> str:
        if self.layout == "wan":
            return f"VAE for Qwen-Image ({self.latent_channels}-channel latents, Wan 2.1's)"
        serves = {SD_LATENT_CHANNELS: "SD1/SD2/SDXL", 32: "FLUX.2"}.get(self.latent_channels, "SD3/Flux/Z-Image/Chroma")
        return f"VAE for {serves} ({self.latent_channels}-channel latents)"


# Wan 2.1's video VAE (Qwen-Image's qwen_image_vae.safetensors): 3-D convolutions, its decoder's first
# one `decoder.conv1` in the original layout (`decoder.conv_in` in diffusers').
WAN_DECODER_IN = ("decoder.conv1.weight", "decoder.conv_in.weight")


def detect_vae(shapes: Mapping[str, Sequence[int]]) -> VaeKind:
    if any(name.startswith(("model.diffusion_model.", "diffusion_model.")) for name in shapes):
        raise VaeFileError("a whole checkpoint, not a VAE on its own; put it in the models folder")
    for key in WAN_DECODER_IN:
        shape = shapes.get(key)
        if shape is not None and len(shape) == 5:
            return VaeKind("wan", "", int(shape[1]))
    prefix = next((p for p in PREFIXES if f"{p}decoder.conv_in.weight" in shapes), None)
    if prefix is None and "decoder.conv_in.weight" in shapes:
        prefix = ""
    if prefix is None:
        raise VaeFileError("not a VAE (no decoder.conv_in.weight)")
    conv_in = shapes[f"{prefix}decoder.conv_in.weight"]
    if len(conv_in) != 4:
        raise VaeFileError(f"a VAE whose decoder.conv_in.weight has shape {list(conv_in)}")
    layout = "diffusers" if any(".up_blocks." in name for name in shapes) else "ldm"
    return VaeKind(layout, prefix, int(conv_in[1]))
