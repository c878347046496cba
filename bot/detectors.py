"""The detectors the detail pass finds faces and hands with: ADetailer's YOLOv8 files (`face_yolov8n.pt`,
`hand_yolov8n.pt`, `person_yolov8n-seg.pt`, … from Bingsu/adetailer on Hugging Face) in
`models/adetailer` (the A1111 extension's folder) or `models/ultralytics` (ComfyUI's Impact Pack:
`bbox/` and `segm/` inside), registered and hashed like every model file (bot/networks/registry.py
does the work) and read by the bounded pickle interpreter with its one detector allowance
(common/detector_file.py): nothing in them runs but the layers Easel builds from their record.

What a file finds (its `base` column: faces, hands, persons) comes from its class names, else its
file name. With no face detector installed, faces are found by the picture check's detector.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from bot.checkpoints.inspection import check_path
from bot.config import Settings
from bot.networks.registry import FileKind, NetworkEntry, NetworkRegistry
from common.detail import HAND_DETECTOR
from common.detector_file import DETECTOR_FOLDERS, read_detector, serves
from common.errors import CheckpointFileError
from common.protocol import ComponentUse, DetectorUse

# ADetailer's own first choices (its model list), then any other of the kind, smallest first.
PREFERRED = {"faces": ("face_yolov8n.pt", "face_yolov8s.pt"), "hands": (HAND_DETECTOR, "hand_yolov8s.pt")}


def examine_detector(path: Path) -> FileKind:
    check_path(path)
    try:
        detector = read_detector(path)
    except CheckpointFileError as e:
        raise CheckpointFileError(f"{path.name}: {e}") from None
    target = serves(detector, path.name)
    task = {"detect": "boxes", "segment": "masks"}.get(detector.task, "")
    label = f"YOLO {task} of {', '.join(detector.classes[:4]) or 'unnamed classes'}" if task else "an ultralytics model"
    metadata = {"classes": ", ".join(detector.classes[:40]), "ultralytics": detector.version}
    reason = detector.reason or ("" if target in ("faces", "hands") else "it finds neither faces nor hands, which the detail pass redraws")
    return FileKind(
        "detector",
        detector.task or "other",
        target,
        label,
        not reason,
        reason,
        len(detector.classes),
        {k: v for k, v in metadata.items() if v},
        "pickle",
    )


class DetectorRegistry(NetworkRegistry):
    noun = "detector"
    family = "detector"
    table = "detectors"
    folder_names = DETECTOR_FOLDERS
    suffixes = (".pt", ".pth")
    list_command = "detectors list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_detector(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return sha256[:10]

    def alias(self, path: Path, found: FileKind) -> str:
        return ""

    async def for_target(self, target: str) -> NetworkEntry | None:
        """The installed detector that finds `target` (faces, hands): ADetailer's default first."""
        entries = [e for e in await self.list(status="present") if e.loadable and e.base == target]
        order = {name: i for i, name in enumerate(PREFERRED.get(target, ()))}
        entries.sort(key=lambda e: (order.get(e.path.name.lower(), len(order)), e.file_size, e.name.lower()))
        return entries[0] if entries else None

    async def passes(self, detail: str) -> tuple[DetectorUse, ...]:
        """The detail pass's passes for `detail` (faces, hands, both; anything else: none, for the rules
        to refuse), each with the installed detector for it, or none (the rules, bot/rules/limits.py,
        then use the picture check's for faces and refuse hands)."""
        wanted = detail.strip().lower()
        passes = []
        for target in {"faces": ("faces",), "hands": ("hands",), "both": ("faces", "hands")}.get(wanted, ()):
            entry = await self.for_target(target)
            use = ComponentUse(entry.layout, entry.path.name, str(entry.path), entry.sha256) if entry else None
            passes.append(DetectorUse(target, use))
        return tuple(passes)


def detector_registry(db: aiosqlite.Connection, settings: Settings) -> DetectorRegistry:
    return DetectorRegistry(db, settings.models_dir.expanduser().resolve())
