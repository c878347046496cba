"""Tiny random-weight Flux.1 files in the real single-file layouts, for tests and the playground.

`make_tiny_flux` writes either shape people have: an all-in-one file (ComfyUI's prefixes, as
Comfy-Org's flux1-dev-fp8.safetensors) or a transformer-only file (BFL's layout, as
flux1-dev.safetensors); `make_tiny_component` writes the separate parts (clip_l.safetensors,
t5xxl_fp16.safetensors, ae.safetensors). Each part is drawn from its own seed, so the all-in-one
file and the separate files made with one seed hold the same weights.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from common.bundled import CONFIG_ROOT
from common.safetensors_writer import temp_path
from gpu_worker.families.flux_layout import to_original
from gpu_worker.ldm_layout import vae_to_ldm
from gpu_worker.model_parts import IN_FILE, TRANSFORMER_PREFIX
from gpu_worker.save import save_atomically

FOLDER = CONFIG_ROOT / "tiny-flux"
SHAPES = ("all-in-one", "transformer")
# Parts for the tiny Flux files, and (sd3-…) for the tiny SD3.5 files, whose encoders are wider.
COMPONENTS = {
    "clip-l": ("clip_l", "tiny-flux"),
    "t5xxl": ("t5xxl", "tiny-flux"),
    "flux-vae": ("vae", "tiny-flux"),
    "sd3-clip-l": ("clip_l", "tiny-sd3"),
    "sd3-clip-g": ("clip_g", "tiny-sd3"),
    "sd3-t5xxl": ("t5xxl", "tiny-sd3"),
}
_PART_SEEDS = {"transformer": 0, "clip_l": 1, "t5xxl": 2, "vae": 3, "clip_g": 4}


def _config(part: str, folder: Path = FOLDER) -> dict:
    return json.loads((folder / part / "config.json").read_text())


def _seeded(part: str, seed: int) -> None:
    torch.manual_seed(seed * 16 + _PART_SEEDS[part])


def transformer_state(seed: int = 0, schnell: bool = False, folder: Path = FOLDER) -> dict[str, torch.Tensor]:
    """Random transformer weights in BFL's layout, of the sizes `folder`'s config gives (tiny-flux's)."""
    _seeded("transformer", seed)
    model = FluxTransformer2DModel.from_config(_config("transformer", folder) | {"guidance_embeds": not schnell})
    return to_original(model.state_dict())


def part_state(role: str, seed: int = 0, folder: Path = FOLDER) -> dict[str, torch.Tensor]:
    """One part's tensors, keys as its separate file has them."""
    _seeded(role, seed)
    sd3 = (folder / "text_encoder_3").is_dir()
    config_of = {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3" if sd3 else "text_encoder_2"}
    if role in ("clip_l", "clip_g"):
        # with its projection, as ComfyUI's clip_l.safetensors has it: one file serves Flux (which
        # does not use it) and SD3 (which does)
        clip = CLIPTextModelWithProjection(CLIPTextConfig(**_config(config_of[role], folder)))
        # as clip_l.safetensors names them (the Hugging Face layout under `text_model.`)
        return {
            (k if k == "text_projection.weight" else f"text_model.{k.removeprefix('text_model.')}"): v
            for k, v in clip.state_dict().items()
            if not k.endswith("position_ids")
        }
    if role == "t5xxl":
        t5 = T5EncoderModel(T5Config(**_config(config_of[role], folder)))
        return {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}  # stored once, as `shared`
    vae = AutoencoderKL.from_config(_config("vae", folder))
    return {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}


def _metadata(title: str, seed: int) -> dict[str, str]:
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": title,
        "modelspec.author": "Easel",
        "modelspec.date": datetime.date.today().isoformat(),
        "easel.tiny_seed": str(seed),
    }


def make_tiny_flux(
    out: Path,
    seed: int = 0,
    shape: str = "all-in-one",
    schnell: bool = False,
    fp8: bool = False,
    folder: Path = FOLDER,
    kontext: bool = False,
) -> Path:
    """A tiny Flux dev (or schnell, or Kontext dev) file; `fp8` stores the transformer's weight
    matrices as float8_e4m3fn, as the fp8 releases people download do. Kontext's tensors are dev's
    (its metadata says Kontext, as the name flux1-kontext-dev.safetensors does)."""
    out = Path(out)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    transformer = transformer_state(seed, schnell, folder)
    if fp8:
        transformer = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in transformer.items()}
    state: dict[str, torch.Tensor]
    if shape == "transformer":
        state = transformer
    else:
        state = {TRANSFORMER_PREFIX + k: v for k, v in transformer.items()}
        for role in ("clip_l", "t5xxl", "vae"):
            state |= {IN_FILE[role][0] + k: v for k, v in part_state(role, seed, folder).items()}
    if kontext and schnell:
        raise ValueError("FLUX.1 Kontext is a dev model; there is no Kontext schnell")
    variant = "schnell" if schnell else "kontext-dev" if kontext else "dev"
    what = "all-in-one" if shape == "all-in-one" else "transformer only"
    metadata = _metadata(f"Easel tiny FLUX.1 {variant.replace('-', ' ')} ({what}, random weights)", seed)
    metadata["modelspec.architecture"] = f"flux-1-{variant}"
    return save_atomically({k: v.contiguous() for k, v in state.items()}, out, metadata, temp_path(out))


def make_tiny_component(kind: str, out: Path, seed: int = 0, folder: Path | None = None) -> Path:
    """A tiny text encoder or VAE file (COMPONENTS), the weights an all-in-one tiny file of `seed`
    holds; `folder` gives other sizes (benchmarks)."""
    out = Path(out)
    if kind not in COMPONENTS:
        raise ValueError(f"unknown component {kind!r}; choose one of {', '.join(COMPONENTS)}")
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    role, config = COMPONENTS[kind]
    state = part_state(role, seed, folder or CONFIG_ROOT / config)
    metadata = _metadata(f"Easel tiny {kind} (random weights)", seed)
    return save_atomically({k: v.contiguous() for k, v in state.items()}, out, metadata, temp_path(out))


# Where ComfyUI and Forge users keep a transformer-only Flux file's parts (bot/components), by kind.
PART_FILES = {
    "clip-l": ("text_encoders", "clip_l.safetensors"),
    "t5xxl": ("text_encoders", "t5xxl_fp16.safetensors"),
    "flux-vae": ("VAE", "ae.safetensors"),
}


def write_transformer_file(
    out: Path,
    shape: str,
    transformer: Callable[[], dict[str, torch.Tensor]],
    parts: Callable[[], dict[str, dict[str, torch.Tensor]]],
    title: str,
    architecture: str,
    seed: int,
) -> Path:
    """A tiny transformer model's file: the transformer alone (`shape` "transformer") or all-in-one,
    under `model.diffusion_model.` with each part's tensors under its prefix (`parts`: prefix -> state)."""
    out = Path(out)
    if shape not in ("transformer", "all-in-one"):
        raise ValueError(f"unknown shape {shape!r}; choose transformer or all-in-one")
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    state = transformer()
    if shape == "all-in-one":
        state = {TRANSFORMER_PREFIX + k: v for k, v in state.items()}
        for prefix, part in parts().items():
            state |= {prefix + k: v for k, v in part.items()}
    metadata = _metadata(f"Easel tiny {title} ({shape}, random weights)", seed) | {"modelspec.architecture": architecture}
    return save_atomically({k: v.contiguous() for k, v in state.items()}, out, metadata, temp_path(out))


def write_part(models: Path, folder: str, name: str, state: dict[str, torch.Tensor], title: str, seed: int) -> Path:
    """A tiny part file where a user keeps it: MODELS/folder/name, its metadata's title `title`."""
    out = Path(models) / folder / name
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = _metadata(f"Easel tiny {title} (random weights)", seed)
    return save_atomically({k: v.contiguous() for k, v in state.items()}, out, metadata, temp_path(out))


def make_tiny_flux_parts(models: Path, seed: int = 0) -> list[Path]:
    """The parts a transformer-only tiny Flux file of `seed` runs with, written into a models folder
    where a user would have them (models/text_encoders, models/VAE)."""
    written = []
    for kind, (folder, name) in PART_FILES.items():
        (Path(models) / folder).mkdir(parents=True, exist_ok=True)
        written.append(make_tiny_component(kind, Path(models) / folder / name, seed))
    return written


def make_tiny_flux_lora(out: Path, seed: int = 0, rank: int = 4, strength: float = 0.5) -> Path:
    """A tiny Flux LoRA in the layout ostris' ai-toolkit writes (diffusers' own: `transformer.<module>
    .lora_A.weight` / `lora_B`), on every attention projection of the tiny transformer."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(_config("transformer"))
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn." in name and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator, device="cpu")
            state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator, device="cpu") * strength
    metadata = _metadata(f"Easel tiny Flux LoRA (random weights, rank {rank})", seed)
    metadata |= {"ss_base_model_version": "flux1", "ss_output_name": out.stem}
    return save_atomically(state, out, metadata, temp_path(out))


def make_tiny_chroma(out: Path, seed: int = 0, shape: str = "transformer") -> Path:
    """A tiny Chroma file of the tiny Flux files' widths: the transformer alone in BFL's layout (as
    Chroma1-HD.safetensors), or all-in-one with the T5-XXL and VAE of the same seed."""
    from diffusers import ChromaTransformer2DModel

    from gpu_worker.families.chroma import to_original as chroma_to_original

    out = Path(out)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the output must end in .safetensors")
    flux = _config("transformer")
    _seeded("transformer", seed)
    model = ChromaTransformer2DModel(
        patch_size=1, in_channels=flux["in_channels"], num_layers=flux["num_layers"], num_single_layers=flux["num_single_layers"],
        attention_head_dim=flux["attention_head_dim"], num_attention_heads=flux["num_attention_heads"],
        joint_attention_dim=flux["joint_attention_dim"], axes_dims_rope=tuple(flux["axes_dims_rope"]),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
    )  # fmt: skip
    transformer = chroma_to_original(model.state_dict())
    state = transformer if shape == "transformer" else {TRANSFORMER_PREFIX + k: v for k, v in transformer.items()}
    if shape == "all-in-one":
        for role in ("t5xxl", "vae"):
            state |= {IN_FILE[role][0] + k: v for k, v in part_state(role, seed).items()}
    metadata = _metadata(f"Easel tiny Chroma ({shape}, random weights)", seed)
    metadata["modelspec.architecture"] = "chroma"
    return save_atomically({k: v.contiguous() for k, v in state.items()}, out, metadata, temp_path(out))
