"""A1111-style files beside a checkpoint: NAME.yaml, NAME.preview.png, NAME.civitai.info, NAME.json.

A bad sidecar never blocks registering its checkpoint: it is skipped with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.catalog.civitai import parse_version

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


def _read_small(path: Path) -> str | None:
    if not path.is_file() or path.stat().st_size > MAX_SIDECAR_BYTES:
        return None
    return path.read_text(encoding="utf-8", errors="replace")


def read_sidecars(checkpoint: Path) -> Sidecars:
    stem = checkpoint.with_suffix("")
    found = Sidecars()

    text = _read_small(stem.with_name(stem.name + ".yaml"))
    if text is not None:
        try:
            config = yaml.safe_load(text) or {}
            params = (config.get("model") or {}).get("params") or {}
            found.yaml_config = {
                "target": (config.get("model") or {}).get("target", ""),
                "parameterization": params.get("parameterization", "eps"),
            }
        except (yaml.YAMLError, AttributeError) as e:
            found.warnings.append(f"{stem.name}.yaml is not a valid model config: {str(e).splitlines()[0]}")

    for suffix in PREVIEW_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            found.preview = candidate
            break

    text = _read_small(stem.with_name(stem.name + ".civitai.info"))
    if text is not None:
        try:
            info = json.loads(text)
            if not isinstance(info, dict):
                raise AttributeError("not a JSON object")
            found.civitai = parse_version(info)
        except (json.JSONDecodeError, AttributeError) as e:
            found.warnings.append(f"{stem.name}.civitai.info is not valid Civitai JSON: {e}")

    text = _read_small(stem.with_name(stem.name + ".json"))
    if text is not None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            found.user_metadata = {k: data[k] for k in USER_METADATA_KEYS if k in data}
        except ValueError as e:
            found.warnings.append(f"{stem.name}.json is not valid user metadata: {e}")
    return found
