"""The upscaler registry: ESRGAN-family models in A1111's `models/ESRGAN` and `models/RealESRGAN` and
ComfyUI's `models/upscale_models`, registered and hashed as LoRAs are (bot/networks/registry.py does
the work), and the names a hires fix or an upscale may take.

A `.pth` is a pickle: the allow-list reader (common/pickle_reader.py) vets it, and the
worker reads it again with `torch.load(weights_only=True)`; nothing in it is ever run.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from bot.config import Settings
from bot.networks.registry import FileKind, NetworkEntry, NetworkRegistry, read_tensor_map
from common.errors import CheckpointFileError, EaselError
from common.hires_upscalers import LATENT_UPSCALERS, PICTURE_UPSCALERS
from common.protocol import UpscalerUse
from common.upscaler_detection import UPSCALER_FOLDERS, UpscalerFileError, detect_upscaler

# A1111's names for the Real-ESRGAN releases it offers (modules/realesrgan_model.py), by file stem:
# an infotext's "Hires upscaler: R-ESRGAN 4x+" finds RealESRGAN_x4plus.pth under that name.
A1111_NAMES = {
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
    "realesrgan_x4plus": "R-ESRGAN 4x+",
    "realesrgan_x4plus_anime_6b": "R-ESRGAN 4x+ Anime6B",
    "realesrgan_x2plus": "R-ESRGAN 2x+",
}


def examine_upscaler(path: Path) -> FileKind:
    """The network in `path`, from its header or its vetted pickle alone."""
    tensors, metadata, pickled = read_tensor_map(path)
    try:
        kind = detect_upscaler({name: t.shape for name, t in tensors.items()})
    except UpscalerFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None
    return FileKind(
        "upscaler",
        kind.layout,
        "",
        kind.label,
        True,
        "",
        kind.scale,
        metadata,
        "pickle" if pickled else "safetensors",
    )


class UpscalerRegistry(NetworkRegistry):
    noun = "upscaler"
    family = "upscaler"
    table = "upscalers"
    folder_names = UPSCALER_FOLDERS
    suffixes = (".pth", ".pt", ".safetensors")
    list_command = "upscalers list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_upscaler(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return sha256[:10]

    def alias(self, path: Path, found: FileKind) -> str:
        return A1111_NAMES.get(path.with_suffix("").name.lower(), "")

    async def choices(self, *, latent: bool = True) -> list[str]:
        """Every name an upscale may take: the built-in ones, then the installed models; without
        `latent`, those for a finished picture (no latent modes)."""
        models = [e.alias or e.name for e in await self.list(status="present") if e.loadable]
        return [*(LATENT_UPSCALERS if latent else ()), *PICTURE_UPSCALERS, *models]

    async def resolve(self, name: str, *, latent: bool = True) -> str | UpscalerUse:
        """A built-in upscaler's A1111 name, or the installed model `name` names; EaselError
        naming the choices otherwise. Without `latent`, the latent modes are not choices (an
        upscale of a finished picture has no latent)."""
        wanted = name.strip().lower()
        if not latent and wanted in (n.lower() for n in LATENT_UPSCALERS):
            raise EaselError(f"{name.strip()} enlarges a latent, inside the hires fix; a finished picture needs a picture upscaler")
        for known in (*(LATENT_UPSCALERS if latent else ()), *PICTURE_UPSCALERS):
            if known.lower() == wanted:
                return known
        entry = await self.find(name)
        if entry is not None and entry.status == "present" and entry.loadable:
            return use_of(entry)
        choices = await self.choices(latent=latent)
        if entry is not None:
            raise EaselError(f"the upscaler {entry.name} is missing from its folder; an admin needs to rescan")
        raise EaselError(f"no upscaler named {name!r}; choose one of {', '.join(choices)}")


def use_of(entry: NetworkEntry) -> UpscalerUse:
    return UpscalerUse(entry.alias or entry.name, str(entry.path), entry.sha256, entry.rank or 1)


def upscaler_registry(db: aiosqlite.Connection, settings: Settings) -> UpscalerRegistry:
    return UpscalerRegistry(db, settings.models_dir.expanduser().resolve(), settings.upscaler_dirs or None)
