"""A1111-style files beside a checkpoint: NAME.yaml, NAME.preview.png, NAME.civitai.info, NAME.json.

A bad sidecar never blocks registering its checkpoint: it is skipped with a warning. A sidecar
obeys the same confinement as checkpoints: one that is (or links to) a file outside the models
directory is not read, so a link cannot make the bot disclose another file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.catalog.civitai import parse_version
from bot.checkpoints.confinement import inside
from bot.untrusted import clean_text, load_json

MAX_SIDECAR_BYTES = 1 << 20
PREVIEW_SUFFIXES = (".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".png", ".jpg", ".jpeg", ".webp")
# A1111's user-metadata editor writes these keys into NAME.json.
USER_METADATA_KEYS = ("description", "sd version", "activation text", "preferred weight", "notes")


@dataclass
class Sidecars:
    yaml_config: dict[str, Any] | None = None  # {"parameterization": "v", "target": ...}
    preview: Path | None = None
    civitai: dict[str, Any] | None = None
    user_metadata: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, root: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.yaml_config:
            out["yaml"] = self.yaml_config
        if self.preview:
            out["preview"] = (
                str(self.preview.relative_to(root)) if self.preview.is_relative_to(root) else str(self.preview)
            )
        if self.civitai:
            out["civitai"] = self.civitai
        if self.user_metadata:
            out["user_metadata"] = self.user_metadata
        return out

    @property
    def description(self) -> str:
        for source in (self.user_metadata or {}, self.civitai or {}):
            text = source.get("description")
            if isinstance(text, str) and text.strip():
                return text.strip()
        return ""

    @property
    def nsfw(self) -> bool:
        return bool((self.civitai or {}).get("nsfw"))

    @property
    def tags(self) -> list[str]:
        tags = (self.civitai or {}).get("tags") or []
        return [t for t in tags if isinstance(t, str)]


def _read_small(path: Path, root: Path) -> str | None:
    confined = inside(path, root)
    try:
        if confined is None or confined.stat().st_size > MAX_SIDECAR_BYTES:
            return None
        return confined.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_preview(path: str | Path | None, root: Path, max_bytes: int) -> bytes | None:
    """A preview image's bytes, if it is still a small regular file inside the models directory."""
    confined = inside(Path(path), root) if path else None
    try:
        if confined is None or confined.stat().st_size > max_bytes:
            return None
        return confined.read_bytes()
    except OSError:
        return None


def read_sidecars(checkpoint: Path, root: Path | None = None) -> Sidecars:
    """The sidecars of `checkpoint`; only files inside `root` (default: the checkpoint's folder) are read."""
    root = root or checkpoint.resolve().parent
    stem = checkpoint.with_suffix("")
    found = Sidecars()

    text = _read_small(stem.with_name(stem.name + ".yaml"), root)
    if text is not None:
        try:
            found.yaml_config = _model_config(text)
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            found.warnings.append(f"{stem.name}.yaml is not a valid model config: {message}")

    for suffix in PREVIEW_SUFFIXES:
        candidate = inside(stem.with_name(stem.name + suffix), root)
        if candidate is not None:
            found.preview = candidate
            break

    text = _read_small(stem.with_name(stem.name + ".civitai.info"), root)
    if text is not None:
        try:
            info = load_json(text)
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
            found.civitai = parse_version(info)
        except ValueError as e:
            found.warnings.append(f"{stem.name}.civitai.info is not valid Civitai JSON: {e}")

    text = _read_small(stem.with_name(stem.name + ".json"), root)
    if text is not None:
        try:
            data = load_json(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            found.user_metadata = {
                k: data[k][:4000] if isinstance(data[k], str) else data[k]
                for k in USER_METADATA_KEYS
                if isinstance(data.get(k), str | int | float)
            }
        except ValueError as e:
            found.warnings.append(f"{stem.name}.json is not valid user metadata: {e}")
    return found


def _model_config(text: str) -> dict[str, str]:
    """What an A1111 NAME.yaml says that we use: the model target and its parameterization.

    Only short strings are kept: a YAML file can alias one node many times over (a "billion laughs"),
    which costs nothing to load but explodes when written out as JSON.
    """
    config = yaml.safe_load(text) or {}
    model = config.get("model") if isinstance(config, dict) else None
    model = model if isinstance(model, dict) else {}
    params = model.get("params") if isinstance(model.get("params"), dict) else {}
    target = model.get("target", "")
    parameterization = params.get("parameterization", "eps")
    if not isinstance(target, str) or not isinstance(parameterization, str):
        raise ValueError("model.target and model.params.parameterization must be text")
    return {"target": clean_text(target[:200]), "parameterization": clean_text(parameterization[:20])}
