"""What a ControlNet file holds, from its tensor names and shapes alone (no torch): its layout, the
base model it was trained beside, a ControlNet-Union model's control types, and the kinds Easel does
not run yet, named.

ControlNets live where the A1111 extension keeps them (`models/ControlNet`) and ComfyUI does
(`models/controlnet`): one folder name, matched in any case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# A1111's extension keeps ControlNets and IP-Adapters in models/ControlNet; ComfyUI its ControlNets in
# models/controlnet and IP-Adapters in models/ipadapter.
CONTROLNET_FOLDERS = ("ControlNet", "ipadapter")
_PREFIX = "control_model."


class ControlNetFileError(ValueError):
    """Not a ControlNet, or one Easel cannot read: the message says which, in one line."""


@dataclass(frozen=True)
class ControlNetKind:
    layout: str  # original (lllyasviel's, A1111's files) | diffusers | union (ControlNet-Union, diffusers' layout)
    base: str  # sd1 | sd2 | sdxl
    label: str
    loadable: bool = True
    reason: str = ""
    union_types: int = 0  # a Union model's control types (its task embedding's rows)
    # An IP-Adapter: the CLIP vision encoder's width it reads — its image embedding's (the plain
    # adapter) or its hidden states' (Plus) — which picks the encoder from models/clip_vision.
    clip_width: int = 0


# Files that sit in the same folder and are not plain ControlNets: (tensor name parts that all show,
# what it is). An XLabs Flux ControlNet has BFL's block names beside its own (a Flux checkpoint has
# no controlnet_blocks), and SD3's input projection: it is told apart first.
_OTHER_KINDS = (
    (("lllite",), "a ControlNet-LLLite (kohya's) file"),
    (("lora_controlnet",), "a Control-LoRA (Stability's) file"),
    (("double_blocks.", "controlnet_blocks."), "an XLabs Flux ControlNet (Easel runs diffusers' layout: InstantX's, Shakker-Labs')"),
    (("pos_embed_input",), "an SD3 ControlNet"),
    (("adapter.body",), "a T2I-Adapter"),
    (("body.0.resnets",), "a T2I-Adapter"),
    (("to_k_lora",), "an IP-Adapter FaceID (it needs InsightFace)"),
    (("perceiver_resampler",), "an IP-Adapter FaceID (it needs InsightFace)"),
)
_BASE_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux": "FLUX.1"}


def detect_controlnet(shapes: Mapping[str, tuple[int, ...]]) -> ControlNetKind:
    names = {name.removeprefix(_PREFIX): shape for name, shape in shapes.items()}
    for parts, what in _OTHER_KINDS:
        if all(any(part in name for name in names) for part in parts):
            return ControlNetKind("other", "", what.split(" ", 1)[1], False, f"{what}: Easel runs SD1/SD2/SDXL ControlNets and Flux ones in diffusers' layout")
    if any(name.startswith("image_proj.") for name in names) and any(name.startswith("ip_adapter.") for name in names):
        return _ip_adapter(names)
    if "controlnet_x_embedder.weight" in names and "x_embedder.weight" in names:  # diffusers' Flux layout
        modes = names.get("controlnet_mode_embedder.weight", (0,))[0]
        return ControlNetKind("flux-union" if modes else "flux", "flux", f"Flux ControlNet{'-Union' if modes else ''} (FLUX.1)", union_types=modes)
    if "input_hint_block.0.weight" in names and "zero_convs.0.0.weight" in names:
        layout = "original"
    elif "controlnet_cond_embedding.conv_in.weight" in names and "controlnet_down_blocks.0.weight" in names:
        layout = "union" if "task_embedding" in names else "diffusers"
    else:
        raise ControlNetFileError("not a ControlNet: it has no map encoder and zero convolutions")
    if "label_emb.0.0.weight" in names or "add_embedding.linear_1.weight" in names:
        base = "sdxl"
    else:
        widths = [shape[1] for name, shape in names.items() if name.endswith("attn2.to_k.weight") and len(shape) == 2]
        base = "sd2" if widths and widths[0] == 1024 else "sd1"
    if layout == "union":
        types = names["task_embedding"][0]
        return ControlNetKind(layout, base, f"ControlNet-Union{' ProMax' if types >= 8 else ''} ({_BASE_LABELS[base]})", union_types=types)
    return ControlNetKind(layout, base, f"ControlNet ({_BASE_LABELS[base]})")


def _ip_adapter(names: Mapping[str, tuple[int, ...]]) -> ControlNetKind:
    """h94's IP-Adapter files: the plain one (a linear projection of the image embedding) or Plus (a
    resampler over the encoder's hidden states); the base by the cross-attention width it adds to."""
    keys = [name for name in names if name.endswith(".to_k_ip.weight")]
    if not keys:
        raise ControlNetFileError("an IP-Adapter without its attention weights")
    width = names[keys[0]][1]
    base = {1024: "sd2", 2048: "sdxl"}.get(width, "sd1")
    if "image_proj.proj.weight" in names and len(names["image_proj.proj.weight"]) == 2:
        return ControlNetKind("ip-adapter", base, f"IP-Adapter ({_BASE_LABELS[base]})", clip_width=names["image_proj.proj.weight"][1])
    if "image_proj.proj_in.weight" in names:
        return ControlNetKind("ip-adapter-plus", base, f"IP-Adapter Plus ({_BASE_LABELS[base]})", clip_width=names["image_proj.proj_in.weight"][1])
    return ControlNetKind("other", base, "IP-Adapter", False, "an IP-Adapter of a kind Easel does not read (Full Face, FaceID)")
