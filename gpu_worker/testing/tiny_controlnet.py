"""Random-weight ControlNets in the files' real layouts, tiny enough for tests: the original
ControlNet layout (A1111's `control_v11p_sd15_*.safetensors`/`.pth`), diffusers' (most SDXL ones), or
a ControlNet-Union ProMax's (xinsir's SDXL files: diffusers' layout with its control types).

Made as ControlNets are trained from: a copy of the base UNet's encoder (`ControlNetModel.from_unet`
on the tiny checkpoint's UNet of the same seed), with random zero convolutions so the unit changes
the picture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, ControlNetUnionModel

from common.safetensors_writer import temp_path
from gpu_worker.ldm_layout import controlnet_to_ldm
from gpu_worker.save import save_atomically
from gpu_worker.testing.tiny import tiny_components

CONTROLNET_LAYOUTS = ("original", "diffusers", "union")


def tiny_controlnet(base: str, seed: int = 0, union: bool = False) -> ControlNetModel | ControlNetUnionModel:
    """With `union`, a ControlNet-Union ProMax (8 control types, its map-weighing transformer)."""
    unet = tiny_components(base, seed)["unet"]
    model = ControlNetUnionModel.from_unet(unet) if union else ControlNetModel.from_unet(unet)
    if union:  # ProMax's eight control types (from_unet makes the class's six): the encoder's copy kept
        copied = model.state_dict()
        width = unet.config.block_out_channels[0]  # SDXL's 320: the map features' width the transformer weighs
        shape = {"num_control_type": 8, "num_trans_channel": width, "num_proj_channel": width}
        model = ControlNetUnionModel.from_config({k: v for k, v in model.config.items() if not k.startswith("_")} | shape)
        model.load_state_dict({k: v for k, v in copied.items() if v.shape == model.state_dict()[k].shape}, strict=False)
    generator = torch.Generator().manual_seed(seed + 1)
    zero = [*model.controlnet_down_blocks, model.controlnet_mid_block, *([model.spatial_ch_projs] if union else [])]
    with torch.no_grad():
        for layer in zero:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)
        if union:
            model.task_embedding.copy_(torch.randn(model.task_embedding.shape, generator=generator))
    return model.eval()


def tiny_flux_controlnet(seed: int = 0, union: bool = False) -> torch.nn.Module:
    """A Flux ControlNet for the tiny Flux checkpoints (diffusers' layout, as InstantX's files), with
    random zero blocks so the unit changes the picture; `union`: InstantX Union's ten control modes."""
    from diffusers import FluxControlNetModel

    from gpu_worker.testing.tiny_flux import FOLDER, _config

    torch.manual_seed(seed + 100)
    config = {k: v for k, v in _config("transformer", FOLDER).items() if not k.startswith("_")}
    model = FluxControlNetModel.from_config(config | {"num_mode": 10 if union else None})
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in [*model.controlnet_blocks, *model.controlnet_single_blocks, model.controlnet_x_embedder]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)
    return model.eval()


def make_tiny_controlnet(base: str, out: Path, seed: int = 0, layout: str = "") -> Path:
    """A ControlNet for the tiny `base` checkpoint of `seed`, written to `out` (.safetensors, or .pth
    as a pickled state dict); `layout` original (SD1's default) or diffusers (SDXL's); for Flux,
    diffusers' layout (or union: InstantX Union's)."""
    if base == "flux":
        if out.suffix.lower() != ".safetensors":
            raise ValueError("a Flux ControlNet file here ends in .safetensors")
        state = {k: v.contiguous() for k, v in tiny_flux_controlnet(seed, union=layout == "union").state_dict().items()}
        out.parent.mkdir(parents=True, exist_ok=True)
        return save_atomically(state, out, {"format": "pt"}, temp_path(out))
    layout = layout or ("diffusers" if base == "sdxl" else "original")
    if layout == "union" and base != "sdxl":
        raise ValueError("ControlNet-Union models are SDXL's")
    model = tiny_controlnet(base, seed, union=layout == "union")
    state = model.state_dict()
    if layout == "original":
        state = controlnet_to_ldm(state, model.config)
    state = {k: v.contiguous() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".pth":
        temp = temp_path(out)
        torch.save({"state_dict": state}, temp)
        temp.replace(out)
        return out
    return save_atomically(state, out, {"format": "pt"}, temp_path(out))


# A tiny CLIP vision encoder in transformers' layout (ComfyUI's models/clip_vision files): 32 wide,
# two layers, 32 px pictures in 8 px patches, a 16-wide image embedding.
TINY_CLIP_VISION = {
    "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
    "image_size": 32, "patch_size": 8, "projection_dim": 16, "hidden_act": "gelu",
}  # fmt: skip


def make_tiny_clip_vision(out: Path, seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION)).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_atomically(state, out, {"format": "pt"}, temp_path(out))


def make_tiny_ip_adapter(base: str, out: Path, seed: int = 0, tokens: int = 4) -> Path:
    """h94's plain IP-Adapter layout for the tiny `base` checkpoint and the tiny encoder: the image
    embedding projected to `tokens` cross-attention tokens, and a key and value projection of them
    for every cross-attention layer of the UNet, numbered as h94's files number them (1, 3, 5, …)."""
    unet = tiny_components(base, seed)["unet"]
    cross = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed + 2)

    def random(*shape: int, scale: float = 0.5) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * scale

    state = {
        "image_proj.proj.weight": random(cross * tokens, TINY_CLIP_VISION["projection_dim"]),
        "image_proj.proj.bias": random(cross * tokens, scale=0.1),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = name.split(".")[0]
        if block == "mid_block":
            hidden = unet.config.block_out_channels[-1]
        elif block == "up_blocks":
            hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
        else:
            hidden = unet.config.block_out_channels[int(name.split(".")[1])]
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = random(hidden, cross)
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = random(hidden, cross)
        key_id += 2
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_atomically(state, out, {"format": "pt"}, temp_path(out))
