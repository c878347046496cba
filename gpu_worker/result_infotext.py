"""A picture's A1111 infotext from its batch: the parameters A1111 and Forge write, under their keys."""

from __future__ import annotations

from pathlib import Path

from common.control import infotext_pairs as control_pairs
from common.detail import DETECTOR
from common.detail import infotext_pairs as detail_pairs
from common.editing import INFOTEXT_KEY as EDIT_KEY
from common.infotext import build_infotext
from common.parameters import written
from common.protocol import RunBatch
from common.regions import RegionSettings, infotext_pairs
from gpu_worker.families import FAMILIES

VERSION = "Easel 0.1.0"


def infotext_for(
    batch: RunBatch, prompt: str, negative: str, seed: int, ti_hashes: str = "", first_block_cache: float = 0.0
) -> str:
    p = batch.parameters
    return build_infotext(
        prompt,
        negative,
        {
            "Steps": p.steps,
            "Sampler": p.sampler,
            "Schedule type": None if p.schedule == "Automatic" else p.schedule,
            "CFG scale": p.cfg,
            # Forge writes Flux dev's guidance input beside the CFG scale (1 unless true CFG runs too).
            "Distilled CFG Scale": f"{p.distilled_cfg:g}" if _distilled(batch) else None,
            "Seed": seed,
            "Size": f"{batch.width}x{batch.height}",
            "Model hash": batch.load.sha256[:10] or None,
            "Model": batch.model_name or batch.load.name,
            # A1111 processing.py: after the model, the VAE that replaced its own (sha256[:10], file name).
            "VAE hash": batch.vae.sha256[:10] if batch.vae else None,
            "VAE": batch.vae.name if batch.vae else None,
            # Forge's names for the separate parts a transformer-only file ran with (file stems).
            **{f"Module {i}": Path(use.name).stem for i, use in enumerate(_modules(batch), start=1)},
            # An edit's input pictures (common/editing.py), by the sha256 each is kept under.
            EDIT_KEY: ", ".join(p.edit_images) or None,
            "Denoising strength": _denoising(batch),
            "Mask blur": p.mask_blur if batch.init_png is not None and batch.mask_png is not None else None,
            **_inpaint_parameters(batch),
            **written(p),  # the parameters that carry their own infotext key (common/parameters.py)
            # A1111 processing.py (txt2img with hires fix): its extra generation parameters.
            "Hires upscale": f"{p.hires_scale:g}" if p.hires_scale else None,
            "Hires steps": p.hires_steps if p.hires_scale and p.hires_steps else None,
            "Hires upscaler": p.hires_upscaler if p.hires_scale else None,
            # hako-mikan's Regional Prompter (scripts/rp.py `process`): its panel, when it drew.
            **(infotext_pairs(RegionSettings.parse(p.regions)) if p.regions else {}),
            # The ControlNet extension's units (scripts/infotext.py), and the pictures Easel keeps for them.
            **control_pairs(p.control, _control_models(batch), min(batch.width, batch.height)),
            # ADetailer's keys for the detail pass (common/detail.py).
            **detail_pairs(p.detail, p.detail_strength, _detectors(batch)),
            # A1111 extensions-builtin/Lora/extra_networks_lora.py: "alias: shorthash", the alias without : and ,
            "Lora hashes": ", ".join(f"{a1111_alias(use.name)}: {use.short_hash}" for use in batch.loras) or None,
            "TI hashes": ti_hashes or None,  # A1111 modules/sd_hijack.py: "name: shorthash" of the words used
            "First block cache": f"{first_block_cache:g}" if first_block_cache else None,  # gpu_worker/speed.py
            "Version": VERSION,
        },
    )


def _detectors(batch: RunBatch) -> tuple[str, ...]:
    """Each detail pass's model as ADetailer writes it: the file's name, or the picture check's detector."""
    return tuple(use.detector.name if use.detector else DETECTOR for use in batch.detectors)


def _control_models(batch: RunBatch) -> tuple[str, ...]:
    """Each unit's model as the extension writes it: "name [old model hash]", with no `,` or `:` (its
    reader splits on them)."""
    return tuple(f"{use.name.replace(',', ' ').replace(':', ' ')} [{use.short_hash}]" for use in batch.controlnets)


def _modules(batch: RunBatch) -> list:
    """A transformer-only file's parts as Forge lists them: the VAE, then the text encoders."""
    order = {"vae": 0, "clip_l": 1, "clip_g": 2, "t5xxl": 3}
    return sorted(batch.load.components, key=lambda use: order.get(use.role, 4))


def _distilled(batch: RunBatch) -> bool:
    """A guidance input was used (Flux dev's), as the family says."""
    family = FAMILIES.get(batch.load.family)
    return family is not None and family.writes_distilled_cfg(batch)


def _inpaint_parameters(batch: RunBatch) -> dict[str, object]:
    """A1111 processing.py writes these only when they are not the defaults (original, whole picture)."""
    if batch.init_png is None or batch.mask_png is None:
        return {}
    p = batch.parameters
    return {
        "Masked content": p.masked_content if p.masked_content != "original" else None,
        "Inpaint area": "Only masked" if p.only_masked else None,
        "Masked area padding": p.mask_padding if p.only_masked else None,
    }


def a1111_alias(name: str) -> str:
    """A name as A1111 writes it in `Lora hashes` and `TI hashes`: without the list's `:` and `,`."""
    return name.replace(":", "").replace(",", "")


def _denoising(batch: RunBatch) -> float | None:
    """A1111's "Denoising strength": the hires pass's, else img2img's; none for plain txt2img."""
    p = batch.parameters
    if p.hires_scale:
        return p.hires_denoise
    return p.strength if batch.init_png is not None else None
