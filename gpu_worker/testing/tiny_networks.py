"""Random-weight LoRAs in kohya's layout (the one most files on Civitai have), and textual-inversion
embeddings in A1111's safetensors layout, for the tiny models.

Keys as kohya-ss/sd-scripts writes them (networks/lora.py): `lora_unet_<module path with _>` and
`lora_te_…` (SD1, SD2) or `lora_te1_…` / `lora_te2_…` (SDXL), each module with `lora_down.weight`
(rank × in), `lora_up.weight` (out × rank) and `alpha`; SDXL UNet modules under their original
(LDM) names, `input_blocks_4_1_…`, as sd-scripts' SDXL trainer saves them. The metadata is kohya's
(`ss_base_model_version`, `ss_output_name`, `ss_tag_frequency`, …) and Stability's modelspec, so the
registry reads base model and trigger words as it would from a real file.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from common.safetensors_writer import temp_path
from gpu_worker.ldm_layout import unet_to_ldm
from gpu_worker.save import save_atomically
from gpu_worker.testing.tiny import TINY_ARCHS, tiny_components

_BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
_MODELSPEC = {
    "sd1": "stable-diffusion-v1/lora",
    "sd2": "stable-diffusion-v2-768-v/lora",
    "sdxl": "stable-diffusion-xl-v1-base/lora",
}
_TEXT_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def _unet_modules(unet: torch.nn.Module, ldm_names: bool, locon: bool = False) -> dict[str, torch.nn.Module]:
    """The UNet layers a LoRA adapts: attention and MLP layers; with `locon`, the ResNet convolutions too."""
    found = {}
    for name, module in unet.named_modules():
        attention = isinstance(module, torch.nn.Linear) and ".attentions." in name
        convolution = locon and isinstance(module, torch.nn.Conv2d) and ".resnets." in name and name.endswith("conv1")
        if attention or convolution:
            if ldm_names:
                [ldm] = unet_to_ldm({f"{name}.weight": module.weight}, unet.config)
                name = ldm.removeprefix("model.diffusion_model.").removesuffix(".weight")
            found[name] = module
    return found


def lora_state_dict(
    parts: dict[str, torch.nn.Module],
    base: str,
    seed: int = 0,
    rank: int = 4,
    strength: float = 0.5,
    locon: bool = False,
    peft: bool = False,
) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA on every attention and MLP layer of `parts` (a model's UNet and text encoders);
    `locon` adds LyCORIS LoCon's convolution layers (down: rank × in × k × k, up: out × rank × 1 × 1);
    `peft` writes diffusers' own layout instead (`unet.<module>.lora_A.weight`, `lora_B`, no alpha)."""
    if peft:
        return _peft_layout(parts, seed, rank, strength)
    unet = _unet_modules(parts["unet"], ldm_names=base == "sdxl", locon=locon)
    modules = {f"lora_unet_{n}": m for n, m in unet.items()}
    encoders = [("lora_te_", parts["text_encoder"])]
    if base == "sdxl":
        encoders = [("lora_te1_", parts["text_encoder"]), ("lora_te2_", parts["text_encoder_2"])]
    for prefix, encoder in encoders:
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(_TEXT_MODULES):
                modules[prefix + name] = module
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        key = name.replace(".", "_")
        if isinstance(module, torch.nn.Conv2d):
            down_shape, up_shape = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        else:
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        state[f"{key}.lora_down.weight"] = (torch.randn(down_shape, generator=generator, device="cpu") * strength).half()
        state[f"{key}.lora_up.weight"] = (torch.randn(up_shape, generator=generator, device="cpu") * strength).half()
        state[f"{key}.alpha"] = torch.tensor(float(rank), device="cpu").half()
    return state


def _peft_layout(parts: dict[str, torch.nn.Module], seed: int, rank: int, strength: float) -> dict[str, torch.Tensor]:
    """diffusers' LoRA layout (SD1/SD2): the UNet's attention layers and the text encoder's, by module path."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers = [(f"unet.{n}", m) for n, m in _unet_modules(parts["unet"], ldm_names=False).items()]
    layers += [
        (f"text_encoder.{n}", m)
        for n, m in parts["text_encoder"].named_modules()
        if isinstance(m, torch.nn.Linear) and n.endswith(_TEXT_MODULES)
    ]
    for name, module in layers:
        state[f"{name}.lora_A.weight"] = (torch.randn(rank, module.in_features, generator=generator, device="cpu") * strength).half()
        state[f"{name}.lora_B.weight"] = (torch.randn(module.out_features, rank, generator=generator, device="cpu") * strength).half()
    return state


def tiny_lora_state_dict(base: str, seed: int = 0, rank: int = 4, locon: bool = False) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA (or LoCon) for the tiny `base` model (sd1, sd2, sdxl)."""
    return lora_state_dict(tiny_components(base), base, seed, rank, locon=locon)


def make_tiny_lora(base: str, out: Path, seed: int = 0, trigger: str = "easel style", locon: bool = False) -> Path:
    """Write a tiny kohya-layout LoRA for `base` to `out` (.safetensors), atomically."""
    if base not in TINY_ARCHS:
        raise ValueError(f"unknown base {base!r}; choose one of {', '.join(TINY_ARCHS)}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    rank = 4
    metadata = {
        "ss_base_model_version": _BASE_VERSION[base],
        "ss_v2": str(base == "sd2"),
        "ss_network_module": "lycoris.kohya" if locon else "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),
        "ss_output_name": out.with_suffix("").name,
        "ss_tag_frequency": json.dumps({"10_easel": {trigger: 10, "tiny": 4, "random": 2}}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _MODELSPEC[base],
        "modelspec.title": f"Easel tiny {base.upper()} LoRA (random weights)",
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.trigger_phrase": trigger,
        "easel.tiny_seed": str(seed),
    }
    state = tiny_lora_state_dict(base, seed, rank, locon)
    return save_atomically(state, out, metadata, temp_path(out))


_EMBEDDING_SPEC = {
    "sd1": "stable-diffusion-v1/textual-inversion",
    "sd2": "stable-diffusion-v2-768-v/textual-inversion",
    "sdxl": "stable-diffusion-xl-v1-base/textual-inversion",
}


def make_tiny_embedding(base: str, out: Path, seed: int = 0, vectors: int = 2) -> Path:
    """Write a tiny random embedding for `base` to `out` (.safetensors): `emb_params`, or SDXL's
    `clip_l` and `clip_g`, as wide as the tiny model's text encoders."""
    if base not in TINY_ARCHS:
        raise ValueError(f"unknown base {base!r}; choose one of {', '.join(TINY_ARCHS)}")
    if not 1 <= vectors <= 75:
        raise ValueError("an embedding has 1 to 75 vectors")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    parts = tiny_components(base)
    generator = torch.Generator().manual_seed(seed)

    def vectors_for(encoder: torch.nn.Module) -> torch.Tensor:
        width = encoder.get_input_embeddings().embedding_dim
        return torch.randn(vectors, width, generator=generator, device="cpu").contiguous()

    if base == "sdxl":
        state = {"clip_l": vectors_for(parts["text_encoder"]), "clip_g": vectors_for(parts["text_encoder_2"])}
    else:
        state = {"emb_params": vectors_for(parts["text_encoder"])}
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _EMBEDDING_SPEC[base],
        "modelspec.title": f"Easel tiny {base.upper()} embedding (random vectors)",
        "easel.tiny_seed": str(seed),
    }
    return save_atomically(state, out, metadata, temp_path(out))


def transformer_lora_state(
    model: torch.nn.Module, prefix: str, targets: tuple[str, ...], seed: int, rank: int = 4, strength: float = 0.5
) -> dict[str, torch.Tensor]:
    """A random LoRA on every linear layer of `model` whose name ends in one of `targets`, in the
    layout ai-toolkit and musubi-tuner write for the flow transformers (`<prefix><module>.lora_A.weight`
    / `lora_B`, diffusers' module names); `model` may be on the meta device (only its shapes are read)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(targets):
            state[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator, device="cpu")
            state[f"{prefix}{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator, device="cpu") * strength
    return state


def save_tiny_transformer_lora(state: dict[str, torch.Tensor], out: Path, title: str, seed: int) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": title,
        "modelspec.date": datetime.date.today().isoformat(),
        "ss_output_name": out.stem,
        "easel.tiny_seed": str(seed),
    }  # no base named: the registry tells it from the keys, as for most files people download
    return save_atomically(state, out, metadata, temp_path(out))
