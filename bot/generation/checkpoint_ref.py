"""The checkpoint a job runs: from the registry by name or hash, or (CLI only) any file by path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from bot.checkpoints.inspection import Inspection, inspect_checkpoint
from bot.checkpoints.registry import CheckpointEntry, CheckpointRegistry
from bot.demo import DEMO_FILE, DEMO_REF
from common.errors import EaselError
from common.families import FAMILIES
from common.hashing import FileHashes
from common.protocol import ComponentUse, LoadRequest, config_parts

# Native square size per bundled config: what "1:1" means for a checkpoint.
NATIVE_SIZE = {
    **{name: family.native_size for name, family in FAMILIES.items()},
    "tiny-sd1": 64,
    "demo-sd1": 64,  # tools/train_demo_model.py's
    "tiny-sd2": 64,
    "tiny-sdxl": 64,
    "tiny-flux": 64,
    "tiny-sd3": 64,
    "tiny-z-image": 64,
    "tiny-qwen-image": 64,
}


@dataclass(frozen=True)
class CheckpointRef:
    name: str
    sha256: str
    path: str
    family: str
    architecture: str
    format: str
    pipeline_config: str | None
    prediction: str
    runnable: bool
    reason: str
    present: bool
    nsfw: bool = False
    zero_snr: bool = False
    vae_sha256: str | None = None  # the checkpoint's default VAE (registry), if an owner chose one
    variant: str = ""  # Flux: dev | schnell; SD: inpainting, edm, …
    needs: tuple[tuple[str, int], ...] = ()  # parts the file lacks (role, width): a transformer-only Flux file
    components: tuple[ComponentUse, ...] = ()  # those parts, chosen from the component store for a job

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    @property
    def file_stem(self) -> str:
        return Path(self.path).with_suffix("").name

    @property
    def native_size(self) -> int:
        config = config_parts(self.pipeline_config)[0]  # a variant (inpainting, EDM): its base's size
        size = NATIVE_SIZE.get(config, 512)
        return 512 if config == "sd2" and self.prediction == "epsilon" else size

    def load_request(self) -> LoadRequest:
        return LoadRequest(
            path=self.path,
            name=self.name,
            family=self.family,
            architecture=self.architecture,
            format=self.format,
            pipeline_config=self.pipeline_config,
            prediction=self.prediction,
            sha256=self.sha256,
            zero_snr=self.zero_snr,
            components=self.components,
            variant=self.variant,
        )

    @classmethod
    def from_entry(cls, entry: CheckpointEntry) -> CheckpointRef:
        return cls(
            name=entry.name,
            sha256=entry.sha256,
            path=str(entry.path),
            family=entry.family,
            architecture=entry.architecture,
            format=entry.format,
            pipeline_config=entry.pipeline_config,
            prediction=entry.prediction,
            runnable=entry.runnable,
            reason=entry.inspection.get("architecture_info", {}).get("reason", ""),
            present=entry.status == "present",
            nsfw=entry.nsfw,
            zero_snr=bool(entry.inspection.get("architecture_info", {}).get("zero_snr", False)),
            vae_sha256=entry.vae_sha256,
            variant=str(entry.inspection.get("architecture_info", {}).get("variant", "")),
            needs=_needs(entry.inspection.get("architecture_info", {}).get("needs", [])),
        )

    @classmethod
    def from_inspection(cls, inspection: Inspection, hashes: FileHashes) -> CheckpointRef:
        """An unregistered file (CLI only): named after the file, identified by its hash."""
        arch = inspection.architecture
        return cls(
            name=inspection.path.with_suffix("").name,
            sha256=hashes.sha256,
            path=str(inspection.path.resolve()),
            family=arch.family,
            architecture=arch.label,
            format=inspection.format,
            pipeline_config=inspection.pipeline_config,
            prediction=arch.prediction,
            runnable=arch.runnable,
            reason=arch.reason,
            present=True,
            zero_snr=arch.zero_snr,
            variant=arch.variant,
            needs=arch.needs,
        )


def _needs(stored: object) -> tuple[tuple[str, int], ...]:
    """The `needs` list of a stored inspection, as (role, width) pairs."""
    if not isinstance(stored, list):
        return ()
    return tuple((str(role), int(width)) for role, width in stored)


async def resolve_checkpoint(registry: CheckpointRegistry, ref: str, *, allow_path: bool = False) -> CheckpointRef:
    """A registered checkpoint by name or hash; with allow_path, also any checkpoint file on disk, and
    `demo` for the demo model shipped with Easel (bot/demo) when no checkpoint has that name."""
    entry = await registry.find(ref)
    if entry is not None:
        return CheckpointRef.from_entry(entry)
    path = DEMO_FILE if allow_path and ref.strip().lower() == DEMO_REF else Path(ref).expanduser()  # noqa: ASYNC240
    if allow_path and await asyncio.to_thread(path.is_file):
        inspection = await asyncio.to_thread(inspect_checkpoint, path)
        return CheckpointRef.from_inspection(inspection, await registry.hashes(path))
    hint = f", a file path or {DEMO_REF} (the demo model)" if allow_path else ""
    raise EaselError(f"no checkpoint named {ref!r}; give a registered name or hash{hint}")
