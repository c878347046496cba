"""CLIP vision encoders (ComfyUI's `models/clip_vision`: CLIP-ViT-H-14 and CLIP-ViT-bigG-14 in
transformers' layout), the registry (bot/networks/registry.py does the work, as for LoRAs), and the
one an IP-Adapter reads its picture with: the encoder whose width its file names (the image
embedding for a plain adapter, the hidden states for Plus).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiosqlite

from bot.config import Settings
from bot.networks.registry import FileKind, NetworkEntry, NetworkRegistry, read_tensor_map
from common.errors import CheckpointFileError
from common.protocol import ComponentUse, ControlNetUse

CLIP_VISION_FOLDERS = ("clip_vision",)
_LABELS = {1280: "CLIP-ViT-H-14", 1664: "CLIP-ViT-bigG-14", 1024: "CLIP-ViT-L-14"}


def examine_clip_vision(path: Path) -> FileKind:
    tensors, metadata, pickled = read_tensor_map(path)
    shapes = {name.removeprefix("vision_model.").removeprefix("model."): tuple(t.shape) for name, t in tensors.items()}
    patch, projection = shapes.get("embeddings.patch_embedding.weight"), tensors.get("visual_projection.weight")
    if patch is None or projection is None or len(patch) != 4:
        raise CheckpointFileError(f"{path.name}: not a CLIP vision encoder in transformers' layout (vision_model.*, visual_projection)")
    hidden = patch[0]
    label = f"{_LABELS.get(hidden, 'CLIP vision')} (width {hidden}, embedding {projection.shape[0]})"
    # base: its hidden width; rank: its image embedding's width (an adapter names one of the two)
    return FileKind("clip_vision", "hf", str(hidden), label, True, "", int(projection.shape[0]), metadata, "pickle" if pickled else "safetensors")


class ClipVisionRegistry(NetworkRegistry):
    noun = "CLIP vision encoder"
    family = "clip_vision"
    table = "clip_vision"
    folder_names = CLIP_VISION_FOLDERS
    suffixes = (".safetensors",)
    list_command = "clip-vision list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_clip_vision(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return sha256[:10]

    def alias(self, path: Path, found: FileKind) -> str:
        return ""

    async def for_adapter(self, adapter: NetworkEntry) -> NetworkEntry | None:
        """The installed encoder an IP-Adapter reads with (of several, the first by name)."""
        for entry in sorted(await self.list(status="present"), key=lambda e: e.name.lower()):
            width = int(entry.base) if adapter.layout == "ip-adapter-plus" else entry.rank
            if width == adapter.rank:
                return entry
        return None


def with_encoder(use: ControlNetUse, entry: NetworkEntry) -> ControlNetUse:
    return replace(use, encoder=ComponentUse("clip_vision", entry.path.name, str(entry.path), entry.sha256))


def clip_vision_registry(db: aiosqlite.Connection, settings: Settings) -> ClipVisionRegistry:
    return ClipVisionRegistry(db, settings.models_dir.expanduser().resolve())
