"""Random-weight checkpoints in the real single-file layouts (SD1, SD2, SDXL), tiny enough for tests.

The models are built from the bundled `configs/tiny-*` folders, so the files load through exactly
the path real checkpoints take: `from_single_file` with a local config folder.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from common.bundled import CONFIG_ROOT
from common.safetensors_writer import temp_path
from gpu_worker.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm
from gpu_worker.save import save_atomically

TINY_ARCHS = {"sd1": "tiny-sd1", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}
# Variants of those: (base, marker tensors). NoobAI-XL v-pred and its merges carry `v_pred` and
# `ztsnr` as empty tensors (ComfyUI's model_detection reads them; its checkpoint saver writes them).
# Playground v2.5 carries `edm_mean` and `edm_std` (1×4×1×1: its latent statistics).
TINY_VARIANTS = {"sdxl-vpred": ("sdxl", ("v_pred", "ztsnr")), "sdxl-edm": ("sdxl", ("edm_mean", "edm_std"))}
_EDM_STATS = {"edm_mean": [-1.6574, 1.886, -1.383, 2.5155], "edm_std": [8.4927, 5.9022, 6.5498, 5.2299]}
_MODELSPEC = {
    "sd1": ("stable-diffusion-v1", "epsilon", "64x64"),
    "sd2": ("stable-diffusion-v2-768-v", "v", "64x64"),
    "sdxl": ("stable-diffusion-xl-v1-base", "epsilon", "64x64"),
}


def _config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


def _text_encoder(folder: Path, component: str, with_projection: bool = False) -> torch.nn.Module:
    config = CLIPTextConfig(**_config(folder, component))
    model_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_cls(config).eval()


def components_from_config(config_id: str, seed: int = 0, inpainting: bool = False) -> dict[str, torch.nn.Module]:
    """Randomly initialised modules for a bundled config folder, by pipeline component name; with
    `inpainting`, the UNet takes 9 channels (latents, mask, masked picture), as inpainting models do."""
    folder = CONFIG_ROOT / config_id
    torch.manual_seed(seed)
    unet_config = _config(folder, "unet") | ({"in_channels": 9} if inpainting else {})
    parts: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel.from_config(unet_config),
        "vae": AutoencoderKL.from_config(_config(folder, "vae")),
        "text_encoder": _text_encoder(folder, "text_encoder"),
    }
    if (folder / "text_encoder_2").is_dir():
        parts["text_encoder_2"] = _text_encoder(folder, "text_encoder_2", with_projection=True)
    return parts


def tiny_components(arch: str, seed: int = 0, inpainting: bool = False) -> dict[str, torch.nn.Module]:
    """Random diffusers/transformers modules of a tiny `arch` model (sd1, sd2, sdxl)."""
    return components_from_config(TINY_ARCHS[arch], seed, inpainting)


def single_file_state_dict(parts: dict[str, torch.nn.Module], family: str) -> dict[str, torch.Tensor]:
    """Components in the original single-file key layout of `family` (sd1, sd2, sdxl)."""
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    state = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config)}
    if family == "sd1":
        state |= clip_to_ldm(text_encoder.state_dict(), "cond_stage_model.transformer.")
    elif family == "sd2":
        state |= open_clip_to_ldm(text_encoder.state_dict(), "cond_stage_model.model.")
    else:
        state |= clip_to_ldm(text_encoder.state_dict(), "conditioner.embedders.0.transformer.")
        state |= open_clip_to_ldm(parts["text_encoder_2"].state_dict(), "conditioner.embedders.1.model.")
    # Real files also carry the DDPM schedule buffers; loaders must ignore them.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    state["betas"] = betas.float()
    state["alphas_cumprod"] = alphas_cumprod.float()
    state["alphas_cumprod_prev"] = torch.cat([torch.ones(1, dtype=torch.float64, device="cpu"), alphas_cumprod[:-1]]).float()
    return {k: v.detach().contiguous() for k, v in state.items()}


def tiny_state_dict(arch: str, seed: int = 0, inpainting: bool = False) -> dict[str, torch.Tensor]:
    """The full single-file state dict of a tiny random model of `arch` (sd1, sd2, sdxl)."""
    return single_file_state_dict(tiny_components(arch, seed, inpainting), arch)


def make_tiny_checkpoint(arch: str, out: Path, seed: int = 0, inpainting: bool = False) -> Path:
    """Write a tiny `arch` checkpoint to `out` (.safetensors), atomically; `arch` may be a variant
    (TINY_VARIANTS: its base's weights and its marker keys, the prediction type left to them)."""
    if arch not in TINY_ARCHS and arch not in TINY_VARIANTS:
        choices = ", ".join([*TINY_ARCHS, *TINY_VARIANTS])
        raise ValueError(f"unknown architecture {arch!r}; choose one of {choices}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    variant, (arch, markers) = arch, TINY_VARIANTS.get(arch, (arch, ()))
    spec, prediction, resolution = _MODELSPEC[arch]
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": spec,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": f"Easel tiny {variant.upper()}{' inpainting' if inpainting else ''} (random weights)",
        "modelspec.description": f"Random-weight {variant.upper()}{' inpainting (9-channel UNet)' if inpainting else ''} "
        "checkpoint in the real single-file layout, for tests.",
        "modelspec.author": "Easel",
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.prediction_type": prediction,
        "modelspec.resolution": resolution,
        "easel.tiny_seed": str(seed),
    }
    if markers:  # the file's keys say its prediction type, as in the real ones
        del metadata["modelspec.prediction_type"]
    marks = {key: torch.tensor(_EDM_STATS[key], device="cpu").view(1, 4, 1, 1) if key in _EDM_STATS else torch.tensor([], device="cpu") for key in markers}
    state = tiny_state_dict(arch, seed, inpainting) | marks
    return save_atomically(state, out, metadata, temp_path(out))


def make_tiny_vae(base: str, out: Path, seed: int = 0) -> Path:
    """A tiny VAE file for the tiny `base` checkpoints, as VAE files are shared: the original (LDM)
    key layout without a prefix, .safetensors."""
    if base not in TINY_ARCHS:
        raise ValueError(f"unknown base {base!r}; choose one of {', '.join(TINY_ARCHS)}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    vae = tiny_components(base, seed)["vae"]
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}
    metadata = {"modelspec.title": f"Easel tiny {base.upper()} VAE (random weights)", "easel.tiny_seed": str(seed)}
    return save_atomically(state, out, metadata, temp_path(out))
