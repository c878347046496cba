"""diffusers state dicts -> the original single-file (LDM) key layout that checkpoint files use.

The inverse of diffusers' single-file converters: it lets Easel write a checkpoint exactly as an
SD1.5 / SD2.1 / SDXL file names its tensors, so the real loader path is what tests exercise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    L = int(config["layers_per_block"])  # type: ignore[call-overload]
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]  # type: ignore[union-attr]
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for key, value in state.items():
        new = None
        for old, ldm in fixed.items():
            if key.startswith(old):
                new = ldm + key[len(old) :]
        if new is None and (m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)):
            b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + b * (L + 1) + layer
            new = f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
        elif new is None and (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)):
            new = f"input_blocks.{1 + int(m[1]) * (L + 1) + L}.0.op.{m[2]}"
        elif new is None and (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)):
            kind, index, rest = m[1], int(m[2]), m[3]
            new = f"middle_block.{1}.{rest}" if kind == "attentions" else f"middle_block.{2 * index}.{_resnet(rest)}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)):
            b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = b * (L + 1) + layer
            new = f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key)):
            b = int(m[1])
            new = f"output_blocks.{b * (L + 1) + L}.{2 if up_has_attention[b] else 1}.{m[2]}"
        if new is None:
            raise ValueError(f"no LDM name for UNet key {key!r}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    n = len(config["block_out_channels"])  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.", new
        )
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            head, _, rest = new.partition(".mid_block.attentions.0.")
            part, _, param = rest.rpartition(".")
            part = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[part]
            new = f"{head}.mid.attn_1.{part}.{param}"
            if param == "weight" and value.ndim == 2:
                value = value[:, :, None, None]  # LDM stores these as 1x1 convolutions
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP layout (SD1 text encoder, SDXL's first): same names under `text_model.`."""
    return {
        prefix + (key if key.startswith("text_model.") else f"text_model.{key}"): value
        for key, value in state.items()
        if not key.endswith("position_ids")
    }


def open_clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP layout (SD2 text encoder, SDXL's second): fused q/k/v, resblocks, transposed projection."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    for key, value in state.items():
        if key in simple:
            out[prefix + simple[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)", key):
            i, rest = m[1], m[2]
            block = f"{prefix}transformer.resblocks.{i}."
            if rest.startswith("self_attn.q_proj."):
                param = rest.rsplit(".", 1)[1]
                qkv = [state[f"encoder.layers.{i}.self_attn.{p}_proj.{param}"] for p in "qkv"]
                out[f"{block}attn.in_proj_{param}"] = torch.cat(qkv, dim=0)
            elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                continue
            else:
                rest = (
                    rest.replace("layer_norm1", "ln_1")
                    .replace("layer_norm2", "ln_2")
                    .replace("mlp.fc1", "mlp.c_fc")
                    .replace("mlp.fc2", "mlp.c_proj")
                    .replace("self_attn.out_proj", "attn.out_proj")
                )
                out[block + rest] = value
        else:
            raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
    return out


def controlnet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet's state dict in the original ControlNet layout (`control_model.`): the
    UNet encoder's keys as the UNet's, its map encoder as `input_hint_block` (convolutions at even
    places, SiLUs between), its zero convolutions as `zero_convs` and `middle_block_out`."""
    own = {}
    encoder = {}
    for key, value in state.items():
        if m := re.match(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(.+)", key):
            place = 0 if m[1] == "conv_in" else 14 if m[1] == "conv_out" else 2 * (int(m[2]) + 1)
            own[f"input_hint_block.{place}.{m[3]}"] = value
        elif m := re.match(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
            own[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        elif key.startswith("controlnet_mid_block."):
            own["middle_block_out.0." + key.removeprefix("controlnet_mid_block.")] = value
        else:
            encoder[key] = value
    unet_config = {**config, "up_block_types": ()}
    shared = {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(encoder, unet_config).items()}
    return {"control_model." + k: v for k, v in {**shared, **own}.items()}
