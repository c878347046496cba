"""What a merge will write, tensor by tensor, decided from the inputs' headers alone (no torch).

Semantics of the A1111 Checkpoint Merger (modules/extras.py `run_modelmerger`):
- weighted sum: (1 - M)·A + M·B; add difference: A + M·(B - C); copy: A as it is.
- Only keys holding "model" that are present in the other inputs are merged; all other keys of A
  are kept as they are.
- Shapes must match, except UNet input channels when A is the inpainting (9) or instruct-pix2pix
  (8) model and B a normal one (4): then only the first 4 channels are merged.
- Optional: bake in a VAE (replace first_stage_model.*), save as fp16, prune EMA weights.
Every refusal happens here, before any tensor is read, and names the key at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bot.checkpoints.architecture import UNET_IN
from bot.checkpoints.inspection import is_pickle_file
from bot.checkpoints.safetensors_header import SafetensorsHeader, StoredTensor
from common.errors import CheckpointFileError
from common.protocol import MergeOrder, MergeSource, MergeStep
from common.tensors import TensorInfo

METHODS = ("weighted_sum", "add_difference", "copy")
A1111_METHOD_NAMES = {"weighted_sum": "Weighted sum", "add_difference": "Add difference", "copy": "No interpolation"}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
VAE_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class PlannedTensor(TensorInfo):
    """An output tensor (name, output dtype, shape) and how to make it."""

    op: str = "copy"  # copy | weighted_sum | add_difference | vae
    partial: bool = False  # merge only the first 4 input channels (inpainting / pix2pix A)


@dataclass
class MergePlan:
    method: str
    multiplier: float
    tensors: list[PlannedTensor] = field(default_factory=list)
    is_inpainting: bool = False
    is_instruct_pix2pix: bool = False

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def vae_key(name: str) -> str:
    """A VAE file's key as it sits inside a checkpoint."""
    return name if name.startswith(VAE_PREFIX) else VAE_PREFIX + name


def plan_merge(
    method: str,
    multiplier: float,
    a: SafetensorsHeader,
    b: SafetensorsHeader | None = None,
    c: SafetensorsHeader | None = None,
    *,
    vae: SafetensorsHeader | None = None,
    fp16: bool = False,
    prune: bool = False,
    merged_part: str | None = None,
) -> MergePlan:
    """`merged_part`: which tensors are merged when not A1111's "model" keys: those under this prefix
    ("" = every tensor the inputs share). Flux: the transformer only, as ComfyUI merges a model
    (`model.diffusion_model.` of an all-in-one file; all of a transformer-only file)."""
    if method not in METHODS:
        raise CheckpointFileError(f"unknown merge method {method!r}; use {', '.join(METHODS)}")
    if method != "copy" and b is None:
        raise CheckpointFileError(f"{method} needs a secondary model")
    if method == "add_difference" and c is None:
        raise CheckpointFileError("add_difference needs a tertiary model (the one B was trained from)")
    if method != "add_difference" and c is not None:
        raise CheckpointFileError("a tertiary model is only used by add_difference")
    if method == "copy" and b is not None:
        raise CheckpointFileError("copy takes only the primary model")
    if not 0.0 <= multiplier <= 1.0:
        raise CheckpointFileError(f"the multiplier must be between 0 and 1, not {multiplier:g}")

    vae_tensors = {vae_key(k): t for k, t in vae.tensors.items()} if vae else {}
    for key, t in vae_tensors.items():
        if key not in a.tensors:
            raise CheckpointFileError(f"the VAE has {key!r}, which the primary model does not: not a VAE for it")
        if a.tensors[key].shape != t.shape:
            raise CheckpointFileError(
                f"VAE tensor {key!r} is {list(t.shape)}, the model's is {list(a.tensors[key].shape)}"
            )

    plan = MergePlan(method, multiplier)
    for name, ta in a.tensors.items():
        if prune and name.startswith("model_ema."):
            continue
        dtype = "F16" if fp16 and ta.dtype in FLOAT_DTYPES else ta.dtype
        if name in vae_tensors:
            plan.tensors.append(PlannedTensor(name, dtype, ta.shape, "vae"))
            continue
        tb = b.tensors.get(name) if b else None
        mergeable = "model" in name if merged_part is None else name.startswith(merged_part)
        if method == "copy" or not mergeable or tb is None:
            plan.tensors.append(PlannedTensor(name, dtype, ta.shape, "copy"))
            continue
        if method == "add_difference":
            tc = c.tensors.get(name) if c else None
            if tc is None:  # A1111: no C weight means no difference to add
                plan.tensors.append(PlannedTensor(name, dtype, ta.shape, "copy"))
                continue
            if tc.shape != tb.shape:
                raise CheckpointFileError(f"shape mismatch at {name!r}: B {list(tb.shape)}, C {list(tc.shape)}")
        partial = _check_shapes(name, ta, tb, plan)
        if ta.dtype not in FLOAT_DTYPES:
            plan.tensors.append(PlannedTensor(name, dtype, ta.shape, "copy"))
            continue
        plan.tensors.append(PlannedTensor(name, dtype, ta.shape, method, partial))
    return plan


def _check_shapes(name: str, ta: StoredTensor, tb: StoredTensor, plan: MergePlan) -> bool:
    """True when only the first 4 input channels are to be merged (inpainting or pix2pix A)."""
    if ta.shape == tb.shape:
        return False
    same_but_channels = (
        len(ta.shape) == 4 and len(tb.shape) == 4 and ta.shape[:1] + ta.shape[2:] == tb.shape[:1] + tb.shape[2:]
    )
    if name == UNET_IN and same_but_channels:
        if ta.shape[1] == 4 and tb.shape[1] in (8, 9):
            kind = "inpainting" if tb.shape[1] == 9 else "instruct-pix2pix"
            raise CheckpointFileError(
                f"when merging an {kind} model with a normal one, the {kind} model must be the primary (A)"
            )
        if ta.shape[1] in (8, 9) and tb.shape[1] == 4:
            plan.is_inpainting = ta.shape[1] == 9
            plan.is_instruct_pix2pix = ta.shape[1] == 8
            return True
    raise CheckpointFileError(
        f"shape mismatch at {name!r}: A {list(ta.shape)}, B {list(tb.shape)}; these models cannot be merged"
    )


def merge_order(
    plan: MergePlan,
    headers: dict[str, SafetensorsHeader],
    paths: dict[str, Path],
    *,
    out: Path,
    temp: Path,
    metadata: dict[str, str],
) -> MergeOrder:
    """The plan as data for the merge process: each output tensor with the byte offsets of its sources,
    so the process reads and combines, and neither parses a header nor plans again."""
    vae_names = {vae_key(k): k for k in headers["vae"].tensors} if "vae" in headers else {}

    def source(role: str, name: str) -> MergeSource:
        t = headers[role].tensors[name]
        return MergeSource(role, headers[role].data_start + t.begin, t.dtype, t.shape)

    steps = []
    for t in plan.tensors:
        if t.op == "vae":
            sources = (source("vae", vae_names[t.name]),)
        elif t.op == "weighted_sum":
            sources = (source("a", t.name), source("b", t.name))
        elif t.op == "add_difference":
            sources = (source("a", t.name), source("b", t.name), source("c", t.name))
        else:
            sources = (source("a", t.name),)
        steps.append(MergeStep(t.name, t.dtype, t.shape, t.op, t.partial, sources))
    return MergeOrder(
        inputs={role: str(path) for role, path in paths.items()},
        steps=tuple(steps),
        multiplier=plan.multiplier,
        out=str(out),
        temp=str(temp),
        metadata=metadata,
    )


def require_safetensors(path: Path) -> None:
    if is_pickle_file(path):  # decided by content, as everywhere
        raise CheckpointFileError(
            f"{path.name}: merging reads .safetensors only; convert it first with `python bot.py convert`"
        )
