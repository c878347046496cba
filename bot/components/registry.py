"""The VAE registry (bot/networks/registry.py does the work, as for LoRAs) and the choice of a job's
VAE: the one the job names, else the checkpoint's own default (A1111's "SD VAE", set per
checkpoint), else the checkpoint's built-in one."""

from __future__ import annotations

import re
from pathlib import Path

import aiosqlite

from bot.components.detection import SD_LATENT_CHANNELS, VAE_FOLDERS, VaeFileError, detect_vae
from bot.config import Settings
from bot.networks.registry import FileKind, NetworkEntry, NetworkRegistry, read_tensor_map
from common.errors import CheckpointFileError, EaselError
from common.families import FAMILIES
from common.protocol import VaeUse

BUILT_IN = ("none", "automatic")  # A1111's "SD VAE" choices that mean the checkpoint's own


def examine_vae(path: Path) -> FileKind:
    tensors, metadata, pickled = read_tensor_map(path)
    try:
        kind = detect_vae({name: t.shape for name, t in tensors.items()})
    except VaeFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None
    base = "sd" if kind.latent_channels == SD_LATENT_CHANNELS else f"{kind.latent_channels}ch"
    base = f"wan-{base}" if kind.layout == "wan" else base
    return FileKind(
        "vae",
        kind.layout,
        base,
        kind.label,
        True,
        "",
        kind.latent_channels,
        metadata,
        "pickle" if pickled else "safetensors",
    )


class VaeRegistry(NetworkRegistry):
    noun = "VAE"
    family = "vae"
    table = "vaes"
    folder_names = VAE_FOLDERS
    suffixes = (".safetensors", ".pt", ".ckpt", ".bin")
    list_command = "vaes list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_vae(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return sha256[:10]  # A1111's "VAE hash"

    def alias(self, path: Path, found: FileKind) -> str:
        return ""

    async def choose(self, name: str | None, default_sha256: str | None, family: str) -> tuple[VaeUse | None, str]:
        """(the job's VAE or None for the checkpoint's own, a note for the requester or ""). A
        named VAE that does not fit or is not installed is refused; a default that went missing is
        skipped with a note."""
        if name is not None and name.strip().lower() in BUILT_IN:
            return None, ""
        if name is not None:
            entry = await self.find(name)
            if entry is None and re.fullmatch(r"[0-9a-f]{64}", name):  # a rerun of a job whose VAE went
                raise EaselError(f"the VAE that job used (sha256 {name[:10]}) is not installed any more")
            entry = entry or await self.get(name)
            if entry.status != "present":
                raise EaselError(f"the VAE {entry.name} is missing from its folder; an admin needs to rescan")
            return self._fitting(entry, family), ""
        if not default_sha256:
            return None, ""
        entry = await self.find(default_sha256)
        if entry is None or entry.status != "present":
            return None, "the checkpoint's chosen VAE is not installed any more; its own VAE was used"
        return self._fitting(entry, family), ""

    async def default_sha256(self, name: str, family: str) -> str:
        """What a checkpoint's default VAE is set to by name: the VAE's sha256, or "" for its own."""
        if name.strip().lower() in BUILT_IN:
            return ""
        entry = await self.get(name)
        return self._fitting(entry, family).sha256

    async def first_fitting(self, family: str) -> VaeUse | None:
        """The first installed VAE (by name) that fits `family`: what a transformer-only Flux file takes
        when neither the job nor the checkpoint names one."""
        for entry in sorted(await self.list(status="present"), key=lambda e: e.name.lower()):
            if entry.rank == _LATENT_CHANNELS.get(family) and _same_layout(entry, family):
                return vae_use(entry)
        return None

    @staticmethod
    def _fitting(entry: NetworkEntry, family: str) -> VaeUse:
        needed = _LATENT_CHANNELS.get(family)
        if needed is not None and entry.rank != needed:
            raise EaselError(f"{entry.name} is a {entry.label}; {family.upper()} checkpoints need a {needed}-channel VAE")
        if not _same_layout(entry, family):
            wanted = "Wan 2.1's video VAE (qwen_image_vae.safetensors)" if family in _WAN else "a picture VAE such as ae.safetensors"
            raise EaselError(f"{entry.name} is a {entry.label}; {FAMILIES[family].label} checkpoints need {wanted}")
        return vae_use(entry)


_LATENT_CHANNELS = {name: family.latent_channels for name, family in FAMILIES.items()}
_WAN = {name for name, family in FAMILIES.items() if family.vae_layout == "wan"}


def _same_layout(entry: NetworkEntry, family: str) -> bool:
    """A Wan video VAE serves the families made with it (Qwen-Image), a picture VAE the others."""
    return (entry.layout == "wan") == (family in _WAN)


def vae_use(entry: NetworkEntry) -> VaeUse:
    return VaeUse(entry.path.name, str(entry.path), entry.sha256, entry.format)


def vae_registry(db: aiosqlite.Connection, settings: Settings) -> VaeRegistry:
    return VaeRegistry(db, settings.models_dir.expanduser().resolve(), settings.vae_dirs or None)
