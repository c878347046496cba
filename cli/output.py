"""Plain-text rendering of inspections and registry entries for the terminal."""

from __future__ import annotations

import json
from typing import Any

from bot.checkpoints.architecture import describe_needs
from bot.checkpoints.inspection import Inspection
from bot.checkpoints.registry import CheckpointEntry
from common.editing import edit_model

MAX_VALUE = 160


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return str(n)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def memory_line(ins: Inspection) -> str:
    """What a flow model's file takes once loaded: its weights widened to 16 bits (bf16 on a GPU), and
    kept in fp8 when the card is too small (docs/gpu.md), or a GGUF file's as they are; the parts it
    lacks come on top."""
    sixteen = ins.parameters * 2
    if ins.format == "gguf":  # its blocks stay as they are in the file (gpu_worker/gguf_weights.py)
        line = f"about {human_size(ins.file_size)}, quantised as in the file ({human_size(sixteen)} at 16 bits)"
        return line + (" (this file's part; the parts it needs come on top)" if ins.architecture.needs else "")
    line = f"about {human_size(sixteen)} at 16 bits, {human_size(ins.parameters)} with fp8 weights"
    return line + (" (this file's part; the parts it needs come on top)" if ins.architecture.needs else "")


def edits_line(family: str, variant: str) -> str | None:
    """The inspect line of an edit model (common/editing.py); None for any other."""
    model = edit_model(family, variant)
    if model is None:
        return None
    return f"Edits:         pictures, by instruction ({model.label}: up to {model.max_pictures} input pictures; /edit, generate --edit)"


def render_inspection(ins: Inspection) -> str:
    arch = ins.architecture
    lines = [
        f"File:          {ins.path} ({human_size(ins.file_size)})",
        f"Format:        {ins.format}",
        f"Architecture:  {arch.label}" + (f"  [decided by {arch.decided_by}]" if arch.decided_by else ""),
        *(
            [f"Prediction:    {arch.prediction}" + (f"  [from {arch.prediction_by}]" if arch.prediction_by else "")]
            if arch.prediction
            else []
        ),
    ]
    if arch.runnable:
        lines.append(
            f"Runnable:      yes (config {ins.pipeline_config})" + (f"; note: {arch.reason}" if arch.reason else "")
        )
    else:
        lines.append(f"Runnable:      no: {arch.reason}")
    parts = [
        f"{name} ({human_count(int(info['parameters']))} params, {'/'.join(info['dtypes'])})"  # type: ignore[arg-type]
        for name, info in ins.components.items()
    ]
    lines.append(f"Components:    {', '.join(parts) or 'none recognised'}")
    if arch.needs:
        lines.append(f"Needs:         {describe_needs(arch.needs)}, from the component store")
    if (line := edits_line(arch.family, arch.variant)) is not None:
        lines.append(line)
    lines.append(f"Parameters:    {ins.parameters:,} in {ins.tensor_count:,} tensors, mostly {ins.dtype}")
    if ins.quantisation:
        lines.append(f"Quantisation:  {ins.quantisation}")
    if arch.prediction == "flow" and arch.runnable:
        lines.append(f"Memory:        {memory_line(ins)}")
    if ins.hashes:
        lines.append(f"SHA256:        {ins.hashes.sha256}")
        lines.append(f"AutoV2:        {ins.hashes.autov2.upper()}")
        lines.append(f"AutoV1:        {ins.hashes.autov1 or 'n/a (file under 2 MiB)'}")
    lines.extend(render_metadata(ins.metadata))
    if ins.format == "ckpt":
        lines.append(f"Tip:           convert it to .safetensors with: python bot.py convert {ins.path}")
    return "\n".join(lines)


def render_metadata(metadata: dict[str, Any]) -> list[str]:
    if not metadata:
        return ["Metadata:      none"]
    lines = ["Metadata:"]
    merge = metadata.get("merge", {})
    if merge:
        lines.append("  merge recipe (A1111):")
        recipe = merge.get("recipe")
        if isinstance(recipe, dict):
            for key in (
                "type",
                "primary_model_hash",
                "secondary_model_hash",
                "tertiary_model_hash",
                "interp_method",
                "multiplier",
            ):
                if recipe.get(key) is not None:
                    lines.append(f"    {key}: {_short(recipe[key])}")
        elif recipe is not None:
            lines.append(f"    recipe: {_short(recipe)}")
        models = merge.get("models")
        if isinstance(models, dict):
            for sha, info in models.items():
                name = info.get("name") if isinstance(info, dict) else info
                lines.append(f"    parent: {_short(name)} ({str(sha)[:10]})")
    for group, prefix in (("modelspec", "modelspec."), ("kohya", ""), ("other", "")):
        for key, value in metadata.get(group, {}).items():
            lines.append(f"  {prefix}{key}: {_short(value)}")
    return lines


def render_entry_line(e: CheckpointEntry) -> str:
    flags = (
        ("" if e.runnable else " [not runnable]")
        + (" [missing]" if e.status == "missing" else "")
        + (" [nsfw]" if e.nsfw else "")
    )
    return f"{e.name:<32} {e.autov2.upper():<10}  {e.architecture:<22} {human_size(e.file_size):>9}  {e.relative_path}{flags}"


def render_entry(e: CheckpointEntry) -> str:
    lines = [
        f"Name:          {e.name}" + (f" ({e.display_name})" if e.display_name != e.name else ""),
        f"Status:        {e.status}",
        f"File:          {e.relative_path} ({human_size(e.file_size)}, {e.format})",
        f"Architecture:  {e.architecture}",
        f"Runnable:      {'yes (config ' + str(e.pipeline_config) + ')' if e.runnable else 'no: ' + str(e.inspection.get('architecture_info', {}).get('reason', ''))}",
        *[line for line in (edits_line(e.family, e.variant),) if line is not None],
        f"SHA256:        {e.sha256}",
        f"AutoV2:        {e.autov2.upper()}",
        f"AutoV1:        {e.autov1 or 'n/a'}",
        *([f"VAE:           the one with sha256 {e.vae_sha256[:10]} (its default)"] if e.vae_sha256 else []),
        f"Training:      {e.training or 'unknown'}",
        f"Tags:          {', '.join(e.tags) or '-'}",
        f"NSFW:          {'yes' if e.nsfw else 'no'}",
    ]
    if e.description:
        lines.append(f"Description:   {_short(e.description)}")
    for facet, value in sorted(e.facets.items()):
        lines.append(f"Owner facet:   {facet}: {', '.join(value) if isinstance(value, list) else value}")
    for parent in e.lineage:
        lines.append(f"Parent:        {parent['role']}: {parent['name'] or '?'} ({parent['autov2'].upper()})")
    for kind, value in e.sidecars.items():
        lines.append(f"Sidecar:       {kind}: {_short(value)}")
    lines.extend(render_metadata(e.inspection.get("metadata", {})))
    return "\n".join(lines)
