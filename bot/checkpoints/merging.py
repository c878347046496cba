"""The merge service: check a merge request (or LoRAs to bake into a checkpoint), run it in a worker
process, register the result.

Every refusal comes before any tensor is read (inputs, architectures, shapes, name, disk space).
The merge itself runs as `python -m gpu_worker merge` (torch stays out of the bot), writing to a
temporary file; only a finished merge is renamed into the models directory and registered, so a
failure, a cancel or a killed process leaves neither a file nor a catalog entry behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.checkpoints.architecture import FLUX_PREFIX
from bot.checkpoints.confinement import resolve_inside
from bot.checkpoints.inspection import inspect_checkpoint
from bot.checkpoints.merge_plan import A1111_METHOD_NAMES, MergePlan, merge_order, plan_merge, require_safetensors
from bot.checkpoints.registry import CheckpointEntry, CheckpointRegistry, slugify
from bot.checkpoints.safetensors_header import SafetensorsHeader, read_header
from bot.child_process import despite_cancellation, run_order
from bot.generation.checkpoint_ref import resolve_checkpoint
from bot.networks.registry import LoraRegistry
from bot.rules.limits import Limits
from bot.rules.network_selection import lora_strength, lora_tags, resolve_loras
from common.errors import CheckpointFileError, EaselError, RegistryError
from common.families import FLOW_FAMILIES
from common.protocol import BakeOrder, LoraUse, encode_order
from common.safetensors_writer import temp_path

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
DISK_MARGIN = 256 << 20

MergeProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class MergeRequest:
    primary: str  # registered name / hash, or (CLI) a file path
    method: str  # weighted_sum | add_difference | copy
    multiplier: float = 0.5
    secondary: str | None = None
    tertiary: str | None = None
    bake_vae: str | None = None  # a VAE .safetensors file
    fp16: bool = False
    prune: bool = False
    name: str | None = None


@dataclass(frozen=True)
class BakeRequest:
    """LoRAs to bake into a copy of a checkpoint, as a prompt names them: "<lora:x:0.7> <lora:y:0.5:1>"."""

    checkpoint: str  # registered name / hash, or (CLI) a file path
    loras: str
    name: str | None = None


@dataclass(frozen=True)
class MergeInput:
    path: Path
    name: str  # file name as A1111 shows it
    sha256: str
    autov1: str | None
    family: str
    label: str
    header: SafetensorsHeader


def _check_transformer_shapes(
    a: MergeInput, b: MergeInput | None, c: MergeInput | None, transformer_only: bool, bake_vae: bool
) -> None:
    """Flux and SD3 files merge with files of the same shape: with their parts (the transformers
    merged, the text encoders and VAE kept from A, as ComfyUI's model merge does), or transformer-only
    with transformer-only."""
    if bake_vae:
        raise CheckpointFileError(f"{a.name} is {a.label}; a VAE can be baked into SD1, SD2 and SDXL checkpoints")
    for other in (b, c):
        if other is None:
            continue
        other_alone = not any(k.startswith(FLUX_PREFIX) for k in other.header.tensors)
        if other_alone != transformer_only:
            shapes = {True: "transformer-only", False: "all-in-one"}
            raise CheckpointFileError(
                f"{a.name} is a {shapes[transformer_only]} file and {other.name} a {shapes[other_alone]} one; "
                "merge files of one shape"
            )


class MergeService:
    def __init__(self, registry: CheckpointRegistry, loras: LoraRegistry | None = None) -> None:
        self.registry = registry
        self.loras = loras
        self.last_peak_rss: int | None = None  # of the last merge process, for logs and benchmarks
        self.running_pid: int | None = None  # the merge process now running, if any

    async def merge(self, request: MergeRequest, progress: MergeProgress | None = None) -> CheckpointEntry:
        a = await self._input(request.primary, "primary")
        b = await self._input(request.secondary, "secondary") if request.secondary else None
        c = await self._input(request.tertiary, "tertiary") if request.tertiary else None
        for other in (b, c):
            if other is not None and other.family != a.family:
                raise CheckpointFileError(
                    f"{a.name} is {a.label} but {other.name} is {other.label}: models of different architectures cannot be merged"
                )
        transformer_model = a.family in FLOW_FAMILIES
        transformer_only = transformer_model and not any(k.startswith(FLUX_PREFIX) for k in a.header.tensors)
        if transformer_model:
            _check_transformer_shapes(a, b, c, transformer_only, bool(request.bake_vae))
        vae_path = self._vae_path(request.bake_vae) if request.bake_vae else None
        vae_header = await asyncio.to_thread(read_header, vae_path) if vae_path else None
        plan = await asyncio.to_thread(
            plan_merge,
            request.method,
            request.multiplier,
            a.header,
            b.header if b else None,
            c.header if c else None,
            vae=vae_header,
            fp16=request.fp16,
            prune=request.prune,
            merged_part=("" if transformer_only else FLUX_PREFIX) if transformer_model else None,
        )
        name = slugify(request.name or default_name(request, a, b, c))
        out = await self._output(name, plan.output_bytes)

        metadata = merge_metadata(request, plan, name, a, b, c, vae_path)
        inputs = {"a": a, "b": b, "c": c}
        headers = {role: i.header for role, i in inputs.items() if i is not None}
        paths = {role: i.path for role, i in inputs.items() if i is not None}
        if vae_path is not None and vae_header is not None:
            headers["vae"], paths["vae"] = vae_header, vae_path
        order = merge_order(plan, headers, paths, out=out, temp=temp_path(out), metadata=metadata)
        log.info("merge %s started: %s", name, metadata["sd_merge_recipe"])
        return await self._produce(
            encode_order(order), "merge", out, Path(order.temp), name, describe(request, a, b, c), progress
        )

    async def bake(self, request: BakeRequest, progress: MergeProgress | None = None) -> CheckpointEntry:
        """A copy of a checkpoint with LoRAs written into its weights (A1111 SuperMerger's "merge LoRA to
        checkpoint"), registered with the checkpoint as its parent and the LoRAs in its recipe."""
        if self.loras is None:
            raise EaselError("LoRAs are not available here")
        a = await self._input(request.checkpoint, "checkpoint")
        if a.family in FLOW_FAMILIES:
            raise CheckpointFileError(f"{a.name} is {a.label}; LoRAs can be baked into SD1, SD2 and SDXL checkpoints")
        ref = await resolve_checkpoint(self.registry, str(a.path), allow_path=True)
        if not lora_tags(request.loras):
            raise EaselError("name the LoRAs to bake as a prompt does, e.g. <lora:NAME:0.8>")
        uses = await resolve_loras(self.loras, request.loras, ref, Limits(), nsfw_allowed=True)
        if not uses:
            raise EaselError("every LoRA named has strength 0: there is nothing to bake")
        stem = Path(a.name).with_suffix("").name
        name = slugify(request.name or f"{stem}-{'-'.join(use.name for use in uses)}")
        out = await self._output(name, a.path.stat().st_size)
        metadata = bake_metadata(name, a, uses)
        order = BakeOrder(ref.load_request(), uses, str(out), str(temp_path(out)), metadata)
        log.info("bake %s started: %s", name, metadata["sd_merge_recipe"])
        strengths = ", ".join(f"{use.name} {lora_strength(use)}" for use in uses)
        description = f"{a.name} with LoRAs baked in: {strengths}"
        return await self._produce(encode_order(order), "bake", out, Path(order.temp), name, description, progress)

    async def _output(self, name: str, size: int) -> Path:
        """Where a new checkpoint of this name goes, once the name is free and the disk has room."""
        if await self.registry.find(name) is not None:
            raise RegistryError(f"the name {name!r} is already taken; choose another with --name")
        out = self.registry.models_root / f"{name}.safetensors"
        if out.exists():
            raise RegistryError(f"{out.name} already exists in the models directory; choose another name")
        free = shutil.disk_usage(out.parent).free
        if free < size + DISK_MARGIN:
            raise EaselError(f"not enough disk space: the result needs {size / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
        return out

    async def _produce(
        self,
        order: bytes,
        command: str,
        out: Path,
        temp: Path,
        name: str,
        description: str,
        progress: MergeProgress | None,
    ) -> CheckpointEntry:
        """Run the worker's `command` on the order (it writes `temp`, then renames it to `out`) and
        register what it wrote."""
        try:
            await self._run(order, command, temp, progress)
            entry = await self.registry.add(out, name=name, description=description, tags=["merged"])
        except BaseException:
            # Failed, cancelled, or killed: no file without its catalog entry.
            if await self.registry.find(name) is None:
                await asyncio.to_thread(out.unlink, missing_ok=True)
            raise
        peak = f"{self.last_peak_rss / 1e9:.2f} GB" if self.last_peak_rss else "unknown"
        log.info("%s %s done: %s (%s), process peak RSS %s", command, name, entry.autov2, entry.architecture, peak)
        return entry

    async def _input(self, ref: str, role: str) -> MergeInput:
        entry = await self.registry.find(ref)
        if entry is not None and entry.status != "present":
            raise RegistryError(f"{role} model {entry.name} is missing from the models directory")
        # A registered file is checked again: what lies at its path may have become a link since.
        path = await asyncio.to_thread(self._existing_path, str(entry.path) if entry else ref, f"{role} model")
        require_safetensors(path)
        inspection = await asyncio.to_thread(inspect_checkpoint, path)
        header = await asyncio.to_thread(read_header, path)
        hashes = await self.registry.hashes(path)
        arch = inspection.architecture
        if arch.family in ("lora", "unknown", "stable-cascade"):
            raise CheckpointFileError(
                f"{role} model {path.name} is {arch.label}; Easel merges SD1, SD2, SDXL, Flux and SD3 checkpoints"
            )
        name = entry.relative_path if entry else path.name
        return MergeInput(path, name, hashes.sha256, hashes.autov1, arch.family, arch.label, header)

    def _existing_path(self, ref: str, what: str) -> Path:
        """A file path as given, or relative to the models directory; confined to it like every path."""
        if not ref.strip():
            raise RegistryError(f"{what}: no checkpoint named")
        try:
            return resolve_inside(Path(ref), self.registry.models_root, what=what)
        except RegistryError as e:
            if "no such file" in str(e):
                raise RegistryError(f"{what} {ref!r}: no checkpoint by that name, hash or path") from None
            raise

    def _vae_path(self, ref: str) -> Path:
        path = self._existing_path(ref, "VAE")
        require_safetensors(path)
        return path

    async def _run(self, order: bytes, command: str, temp: Path, progress: MergeProgress | None) -> None:
        """Hand the order to `python -m gpu_worker COMMAND` and follow it to its exit."""
        self.last_peak_rss = None

        def started(pid: int | None) -> None:
            self.running_pid = pid

        try:
            self.last_peak_rss = (await run_order(command, order, progress, started)).get("peak_rss_bytes")
        except BaseException:
            await despite_cancellation(asyncio.ensure_future(asyncio.to_thread(temp.unlink, missing_ok=True)))
            raise
        finally:
            self.running_pid = None


def default_name(request: MergeRequest, a: MergeInput, b: MergeInput | None, c: MergeInput | None) -> str:
    stem = Path(a.name).with_suffix("").name
    m = request.multiplier
    if request.method == "weighted_sum" and b:
        return f"{stem}_{round(1 - m, 2):g}-{Path(b.name).with_suffix('').name}_{round(m, 2):g}-weighted_sum-merged"
    if request.method == "add_difference" and b:
        return f"{stem}-add_difference_{round(m, 2):g}-{Path(b.name).with_suffix('').name}-merged"
    extras = [x for x, on in (("fp16", request.fp16), ("baked-vae", request.bake_vae), ("pruned", request.prune)) if on]
    return f"{stem}-{'-'.join(extras) or 'copy'}"


def describe(request: MergeRequest, a: MergeInput, b: MergeInput | None, c: MergeInput | None) -> str:
    m = request.multiplier
    if request.method == "weighted_sum" and b:
        text = f"Weighted sum: {a.name} × {1 - m:g} + {b.name} × {m:g}"
    elif request.method == "add_difference" and b and c:
        text = f"Add difference: {a.name} + {m:g} × ({b.name} − {c.name})"
    else:
        text = f"Copy of {a.name}"
    extras = [
        x for x, on in (("fp16", request.fp16), ("VAE baked in", request.bake_vae), ("EMA pruned", request.prune)) if on
    ]
    return text + (f" ({', '.join(extras)})" if extras else "")


def merge_metadata(
    request: MergeRequest,
    plan: MergePlan,
    name: str,
    a: MergeInput,
    b: MergeInput | None,
    c: MergeInput | None,
    vae: Path | None,
) -> dict[str, str]:
    """`sd_merge_recipe` and `sd_merge_models` as A1111's merger writes them, so A1111 shows the lineage too."""
    recipe = {
        "type": "easel",
        "primary_model_hash": a.sha256,
        "secondary_model_hash": b.sha256 if b else None,
        "tertiary_model_hash": c.sha256 if c else None,
        "interp_method": A1111_METHOD_NAMES[request.method],
        "multiplier": request.multiplier,
        "save_as_half": request.fp16,
        "custom_name": name,
        "config_source": 0,
        "bake_in_vae": vae.name if vae else "None",
        "discard_weights": "model_ema" if request.prune else "",
        "is_inpainting": plan.is_inpainting,
        "is_instruct_pix2pix": plan.is_instruct_pix2pix,
    }
    models: dict[str, Any] = {}
    for parent in (a, b, c):
        if parent is None:
            continue
        own = parent.header.metadata
        models[parent.sha256] = {
            "name": parent.name,
            "legacy_hash": parent.autov1,
            "sd_merge_recipe": _json(own.get("sd_merge_recipe")),
        }
        grand = _json(own.get("sd_merge_models"))
        if isinstance(grand, dict):
            models.update(grand)
    return {
        "format": "pt",
        "modelspec.title": name,
        "sd_merge_recipe": json.dumps(recipe),
        "sd_merge_models": json.dumps(models),
    }


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def bake_metadata(name: str, a: MergeInput, uses: tuple[LoraUse, ...]) -> dict[str, str]:
    """A merge recipe for a bake: the checkpoint as primary parent (so the registry records the lineage)
    and each LoRA with its hashes and strengths."""
    recipe = {
        "type": "easel-lora-bake",
        "primary_model_hash": a.sha256,
        "custom_name": name,
        "loras": [
            {"name": u.name, "sha256": u.sha256, "short_hash": u.short_hash, "te": u.te, "unet": u.unet} for u in uses
        ],
    }
    models = {
        a.sha256: {
            "name": a.name,
            "legacy_hash": a.autov1,
            "sd_merge_recipe": _json(a.header.metadata.get("sd_merge_recipe")),
        }
    }
    return {"modelspec.title": name, "sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models)}
