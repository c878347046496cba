"""Model files of any kind, for the commands that take "a file": the LoRA, embeddings and upscaler
folders hold those, the rest of the models directory checkpoints (as A1111's models/Lora, embeddings,
models/ESRGAN and models/Stable-diffusion)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from bot.checkpoints.registry import CheckpointEntry, CheckpointRegistry, HashProgress, ScanReport
from bot.components.registry import vae_registry
from bot.components.text_encoders import text_encoder_registry
from bot.config import Settings
from bot.controlnets.annotators import annotator_registry
from bot.controlnets.clip_vision import clip_vision_registry
from bot.controlnets.registry import controlnet_registry
from bot.detectors import detector_registry
from bot.networks.registry import NetworkEntry, NetworkRegistry, NetworkScan, network_registries
from bot.upscalers.registry import upscaler_registry
from common.errors import RegistryError


def file_registries(db: aiosqlite.Connection, settings: Settings) -> list[NetworkRegistry]:
    """The registries of files beside checkpoints: LoRAs, embeddings, upscalers, VAEs, text encoders,
    ControlNets."""
    return [
        *network_registries(db, settings),
        upscaler_registry(db, settings),
        vae_registry(db, settings),
        text_encoder_registry(db, settings),
        controlnet_registry(db, settings),
        clip_vision_registry(db, settings),
        annotator_registry(db, settings),
        detector_registry(db, settings),
    ]


async def add_model_file(
    checkpoints: CheckpointRegistry,
    networks: Sequence[NetworkRegistry],
    path: Path,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: list[str] | None = None,
    nsfw: bool | None = None,
    progress: HashProgress | None = None,
) -> CheckpointEntry | NetworkEntry:
    for registry in networks:
        if await asyncio.to_thread(registry.holds, path):
            return await registry.add(path, name=name, description=description, nsfw=nsfw)
    return await checkpoints.add(path, name=name, description=description, tags=tags, nsfw=nsfw, progress=progress)


async def scan_models(
    checkpoints: CheckpointRegistry, networks: Sequence[NetworkRegistry], progress: HashProgress | None = None
) -> tuple[ScanReport, list[NetworkScan]]:
    report = await checkpoints.scan(progress)
    return report, [await registry.scan() for registry in networks]


async def remove_model(
    checkpoints: CheckpointRegistry, networks: Sequence[NetworkRegistry], ref: str
) -> CheckpointEntry | NetworkEntry:
    """Forget a checkpoint, or else a LoRA or embedding, by name or hash; the file stays where it is."""
    if await checkpoints.find(ref) is not None:
        return await checkpoints.remove(ref)
    for registry in networks:
        if await registry.find(ref) is not None:
            return await registry.remove(ref)
    raise RegistryError(f"no checkpoint, LoRA, embedding, upscaler, VAE, text encoder or ControlNet named {ref!r}")
