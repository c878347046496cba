"""Inspect a checkpoint file: format, architecture, components, size and metadata.

Reads only headers (the safetensors JSON header, a GGUF header, or the pickle of a torch zip archive
through the allow-list), never tensor data, so the time taken does not grow with the file's size. Hashes are
added by `inspect_with_hashes`, which streams the file once and caches the result.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.checkpoints.architecture import Architecture, components, detect_architecture
from bot.checkpoints.pipeline_config import choose_pipeline_config
from bot.checkpoints.safetensors_header import read_header
from bot.untrusted import load_json
from common.errors import CheckpointFileError
from common.families import FAMILIES, FLOW_FAMILIES
from common.gguf_header import describe, is_gguf, read_gguf_header, unreadable_types
from common.hashing import FileHashes
from common.pickle_reader import read_pickle_checkpoint
from common.tensors import TensorInfo, quantisation

MAX_KEPT_METADATA_CHARS = 64 * 1024
# All the metadata kept of one file: the registry stores it and parses it again on every listing
# (autocomplete included), so it stays small whatever the file holds.
MAX_KEPT_METADATA_TOTAL = 256 * 1024
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
GGUF_SUFFIXES = {".gguf"}  # city96's ComfyUI-GGUF transformers
CHECKPOINT_SUFFIXES = PICKLE_SUFFIXES | SAFETENSORS_SUFFIXES | GGUF_SUFFIXES


@dataclass
class Inspection:
    path: Path
    format: str  # "safetensors", "gguf" or "ckpt"
    file_size: int
    architecture: Architecture
    components: dict[str, dict[str, object]]
    tensor_count: int
    parameters: int
    dtype: str  # the dtype holding most of the bytes
    metadata: dict[str, Any]
    pipeline_config: str | None = None
    hashes: FileHashes | None = None
    extras: dict[str, object] = field(default_factory=dict)
    quantisation: str = ""  # common/tensors.py `quantisation`: "" for plain weights

    @property
    def runnable(self) -> bool:
        return self.architecture.runnable

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "architecture": self.architecture.label,
            "architecture_info": self.architecture.to_dict(),
            "runnable": self.runnable,
            "pipeline_config": self.pipeline_config,
            "components": self.components,
            "tensor_count": self.tensor_count,
            "parameters": self.parameters,
            "dtype": self.dtype,
            "quantisation": self.quantisation,
            "file_size": self.file_size,
            "sha256": self.hashes.sha256 if self.hashes else None,
            "autov2": self.hashes.autov2 if self.hashes else None,
            "autov1": self.hashes.autov1 if self.hashes else None,
            "metadata": self.metadata,
        }


def check_path(path: Path) -> Path:
    if not path.exists():
        raise CheckpointFileError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointFileError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointFileError(f"{path}: not a regular file")
    return path


def is_pickle_file(path: Path) -> bool:
    """Decided by content, not by name: a torch zip archive or a raw pickle, else safetensors.

    `x.SAFETENSORS`, `x.sft` and a `.ckpt` that is really safetensors are all read for what they are.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if head[:4] == b"PK\x03\x04":
        return True
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return False  # a safetensors header: its length fits the file and the JSON follows
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True  # a raw pickle (a legacy torch file) starts with PROTO
    return path.suffix.lower() in PICKLE_SUFFIXES or zipfile.is_zipfile(path)


def inspect_file(path: Path, yaml_sidecar: dict[str, Any] | None = None) -> Inspection:
    """Inspect `path` from its header; raise CheckpointFileError with a one-line reason if it is bad."""
    check_path(path)
    try:
        return _inspect(path, yaml_sidecar)
    except CheckpointFileError as e:
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise CheckpointFileError(f"{path.name}: not a checkpoint file ({e})") from None
        raise CheckpointFileError(f"{path.name}: {e}") from None


def _inspect(path: Path, yaml_sidecar: dict[str, Any] | None) -> Inspection:
    metadata: dict[str, str] = {}
    extras: dict[str, object] = {}
    tensors: dict[str, TensorInfo]
    if is_gguf(path):
        gguf = read_gguf_header(path)
        tensors, metadata, fmt = dict(gguf.tensors), gguf.metadata, "gguf"
    elif is_pickle_file(path):
        ckpt = read_pickle_checkpoint(path)
        tensors, extras, fmt = dict(ckpt.tensors), ckpt.extras, "ckpt"
    else:
        header = read_header(path)
        tensors, metadata, fmt = dict(header.tensors), header.metadata, "safetensors"
    hints = dict(metadata)
    parameterization = (yaml_sidecar or {}).get("parameterization")
    if parameterization and "modelspec.prediction_type" not in hints:
        hints["modelspec.prediction_type"] = "v" if parameterization == "v" else "epsilon"
    architecture = detect_architecture(tensors, hints, extras, path.name)
    quantised = describe(tensors) if fmt == "gguf" else quantisation(list(tensors))
    if quantised.startswith("NVFP4") and architecture.runnable:
        architecture = replace(architecture, runnable=False, reason="NVFP4 weights are not supported; use the model's fp8 or 16-bit file")
    if fmt == "gguf" and architecture.runnable:
        architecture = _gguf_verdict(architecture, tensors)
    try:
        config, why_not = choose_pipeline_config(architecture, tensors)
    except (KeyError, IndexError) as e:  # a width the verdict relies on is not in the file as its names say
        config, why_not = None, f"its tensors do not have the layout their names promise ({type(e).__name__}: {str(e)[:80]})"
    if config is None and architecture.runnable:
        architecture = replace(architecture, runnable=False, reason=why_not)
    bytes_by_dtype: Counter[str] = Counter()
    for t in tensors.values():
        bytes_by_dtype[t.dtype] += t.nbytes
    return Inspection(
        path=path,
        format=fmt,
        file_size=path.stat().st_size,
        architecture=architecture,
        components=components(tensors),
        tensor_count=len(tensors),
        parameters=sum(t.numel for t in tensors.values()),
        dtype=bytes_by_dtype.most_common(1)[0][0] if bytes_by_dtype else "",
        metadata=group_metadata(metadata),
        pipeline_config=config,
        extras=extras,
        quantisation=quantised,
    )


def _gguf_verdict(architecture: Architecture, tensors: dict[str, TensorInfo]) -> Architecture:
    """A GGUF file runs when it is a flow model's transformer in types the worker can widen."""
    if architecture.family not in FLOW_FAMILIES:
        flows = ", ".join(FAMILIES[name].label for name in FLOW_FAMILIES)
        return replace(architecture, runnable=False, reason=f"GGUF files are read for the transformer models ({flows}); use its safetensors file")
    unreadable = unreadable_types(tensors)  # type: ignore[arg-type]
    if unreadable:
        return replace(
            architecture, runnable=False, reason=f"it holds {', '.join(unreadable)} weights, which cannot be widened here; use its Q8_0, Q6_K or Q4_K file"
        )
    return architecture


def inspect_checkpoint(path: Path) -> Inspection:
    """Inspect `path`, honouring an A1111 NAME.yaml beside it (it may say the prediction type)."""
    from bot.checkpoints.sidecars import read_sidecars

    check_path(path)
    return inspect_file(path, read_sidecars(path).yaml_config)


def group_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """Sort safetensors metadata into modelspec, kohya, merge recipe and the rest (kept raw)."""
    grouped: dict[str, Any] = {"modelspec": {}, "kohya": {}, "merge": {}, "other": {}}
    kept = 0
    for key, value in raw.items():
        if len(value) > MAX_KEPT_METADATA_CHARS or kept + len(key) + len(value) > MAX_KEPT_METADATA_TOTAL:
            # An embedded thumbnail or a dataset's tag counts: kept out of the registry and every answer.
            value = f"({len(value):,} characters, not shown)"
        key = key[:200]
        kept += len(key) + len(value)
        if key.startswith("modelspec."):
            grouped["modelspec"][key.removeprefix("modelspec.")] = value
        elif key.startswith("ss_"):
            grouped["kohya"][key] = value
        elif key in ("sd_merge_recipe", "sd_merge_models"):
            grouped["merge"][key.removeprefix("sd_merge_")] = _json_or_raw(value)
        else:
            grouped["other"][key] = value
    return {k: v for k, v in grouped.items() if v}


def _json_or_raw(value: str) -> Any:
    try:
        return load_json(value)
    except ValueError:
        return value
