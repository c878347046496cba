"""The ControlNet registry (bot/networks/registry.py does the work, as for LoRAs) and the model a unit
runs: the one it names, else the installed one for the checkpoint's base whose name holds the
preprocessor's word, as the extension's Control Type filter picks (a v1.1 file first: "11" in its
name), else a ControlNet-Union model that has the preprocessor's control type.

A `.pth` is a pickle: the allow-list reader (common/pickle_reader.py) vets it, and the
worker reads it again with `torch.load(weights_only=True)`; nothing in it is ever run. The short
hash is A1111's old 8-hex model hash, which the extension writes after the name ("[d14c016b]").
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiosqlite

from bot.config import Settings
from bot.controlnets.detection import CONTROLNET_FOLDERS, ControlNetFileError, detect_controlnet
from bot.networks.registry import FileKind, NetworkEntry, NetworkRegistry, read_tensor_map
from common.control import FLUX_UNION_MODES, ControlError, preprocessor
from common.errors import CheckpointFileError
from common.hashing import autov1
from common.protocol import ControlNetUse

UNION_LAYOUTS = ("union", "flux-union")  # a model whose control types (modes) read each map


def examine_controlnet(path: Path) -> FileKind:
    """The ControlNet in `path`, from its header or its vetted pickle alone."""
    tensors, metadata, pickled = read_tensor_map(path)
    try:
        kind = detect_controlnet({name: tuple(t.shape) for name, t in tensors.items()})
    except ControlNetFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None
    if kind.base == "flux" and pickled:
        kind = replace(kind, loadable=False, reason="a Flux ControlNet is read from .safetensors only")
    return FileKind(
        "controlnet",
        kind.layout,
        kind.base,
        kind.label,
        kind.loadable,
        kind.reason,
        kind.union_types or kind.clip_width or None,  # a Union model's types, an IP-Adapter's encoder width
        metadata,
        "pickle" if pickled else "safetensors",
    )


class ControlNetRegistry(NetworkRegistry):
    noun = "ControlNet"
    family = "controlnet"
    table = "controlnets"
    folder_names = CONTROLNET_FOLDERS
    suffixes = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")  # .bin: h94's IP-Adapters
    list_command = "controlnets list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_controlnet(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return autov1(path) or sha256[:8]

    def alias(self, path: Path, found: FileKind) -> str:
        return ""

    async def for_unit(self, model: str, module: str, family: str) -> ControlNetUse:
        """The model a unit runs on a `family` checkpoint: `model` by name or hash, else the one the
        preprocessor's word finds among those for that base; ControlError saying what to install or
        choose otherwise. (Whether it fits the checkpoint is the job rules' to say: bot/rules/limits.py.)"""
        if model:
            entry = await self.find(model)
            if entry is None:
                raise ControlError(f"no ControlNet named {model!r}; `{self.list_command}` shows what is installed")
        else:
            entry = await self._by_word(preprocessor(module).word, module, family)
        if entry.status != "present":
            raise ControlError(f"the ControlNet {entry.name} is missing from its folder; an admin needs to rescan")
        if not entry.loadable:
            raise ControlError(f"the ControlNet {entry.name} cannot be run: {entry.reason}")
        return use_of(entry)

    async def _by_word(self, word: str, module: str, family: str) -> NetworkEntry:
        if not word:
            raise ControlError(f"with the preprocessor {module}, name the ControlNet model to run")
        installed = [e for e in await self.list(status="present", base=family) if e.loadable]
        fitting = [e for e in installed if word in e.name.lower()]
        # else a ControlNet-Union model that has the preprocessor's control type
        union = FLUX_UNION_MODES.get(module) if family == "flux" else preprocessor(module).union
        fitting = fitting or [e for e in installed if e.layout in UNION_LAYOUTS and union is not None and union < (e.rank or 0)]
        if not fitting:
            examples = {"sd1": f"control_v11p_sd15_{word}", "sd2": f"controlnet_sd21_{word}", "flux": "FLUX.1-dev-ControlNet-Union-Pro"}
            example = examples.get(family, f"controlnet-{word}-sdxl-1.0")
            raise ControlError(
                f"no {word} ControlNet for this checkpoint is installed; put one (e.g. {example}) in models/ControlNet"
            )
        # The anime line model for the anime preprocessor, the plain one for the others (the extension's
        # control_v11p_sd15s2_lineart_anime beside control_v11p_sd15_lineart); then a v1.1 file first.
        anime = "anime" in module
        return min(fitting, key=lambda e: (("anime" in e.name.lower()) != anime, "11" not in e.name))


def use_of(entry: NetworkEntry) -> ControlNetUse:
    """The model as a batch names it; an IP-Adapter's encoder is chosen by the job rules' caller (bot/jobs.py)."""
    types = entry.rank or 0 if entry.layout in UNION_LAYOUTS else 0
    return ControlNetUse(entry.name, str(entry.path), entry.sha256, entry.short_hash, entry.base, types, entry.layout)


def controlnet_registry(db: aiosqlite.Connection, settings: Settings) -> ControlNetRegistry:
    return ControlNetRegistry(db, settings.models_dir.expanduser().resolve())
