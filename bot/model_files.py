"""Model files of any kind, for the commands that take "a file": the LoRA folders hold LoRAs, the rest
of the models directory checkpoints (as in A1111's models/Lora and models/Stable-diffusion)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.checkpoints.registry import CheckpointEntry, CheckpointRegistry, HashProgress, ScanReport
from bot.errors import RegistryError
from bot.loras.registry import LoraEntry, LoraRegistry, LoraScan


async def add_model_file(
    checkpoints: CheckpointRegistry,
    loras: LoraRegistry,
    path: Path,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: list[str] | None = None,
    nsfw: bool | None = None,
    progress: HashProgress | None = None,
) -> CheckpointEntry | LoraEntry:
    if await asyncio.to_thread(loras.holds, path):
        return await loras.add(path, name=name, description=description, nsfw=nsfw)
    return await checkpoints.add(path, name=name, description=description, tags=tags, nsfw=nsfw, progress=progress)


async def scan_models(
    checkpoints: CheckpointRegistry, loras: LoraRegistry, progress: HashProgress | None = None
) -> tuple[ScanReport, LoraScan]:
    return await checkpoints.scan(progress), await loras.scan()


async def remove_model(checkpoints: CheckpointRegistry, loras: LoraRegistry, ref: str) -> CheckpointEntry | LoraEntry:
    """Forget a checkpoint, or else a LoRA, by name or hash; the file stays where it is."""
    if await checkpoints.find(ref) is not None:
        return await checkpoints.remove(ref)
    if await loras.find(ref) is not None:
        return await loras.remove(ref)
    raise RegistryError(f"no checkpoint or LoRA named {ref!r}")
