"""Annotator models some ControlNet preprocessors run (lllyasviel/Annotators' files), in
`models/ControlNetPreprocessor` (Forge's folder; the A1111 extension keeps the same files under its
`annotator/downloads`), registered and hashed like every model file (bot/networks/registry.py does
the work), and the one a unit's preprocessor runs with.

Which network a file holds is read from its tensors' names and shapes (gpu_worker/annotators.py
builds the same): HED (`ControlNetHED.pth`) and the line drawing generator (`sk_model.pth`,
`sk_model2.pth`: one network, two trainings, told apart by name as the extension does) and
OpenPose's body model (`body_pose_model.pth`) and Depth Anything V2 (`depth_anything_v2_vit?.pth`,
`depth_anything_v2_vitl.safetensors`). Other annotator files are registered as not run, named. A `.pth` is vetted by the allow-list pickle reader.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiosqlite

from bot.config import Settings
from bot.networks.registry import FileKind, NetworkEntry, NetworkRegistry, read_tensor_map
from common.control import Preprocessor
from common.errors import EaselError
from common.protocol import ComponentUse, ControlNetUse

ANNOTATOR_FOLDERS = ("ControlNetPreprocessor",)


def annotator_layout(shapes: dict[str, tuple[int, ...]]) -> str:
    """hed, lineart, or "" for a network Easel does not run."""
    if shapes.get("norm") == (1, 3, 1, 1) and shapes.get("block5.projection.weight") == (1, 512, 1, 1):
        return "hed"
    if shapes.get("model0.1.weight") == (64, 3, 7, 7) and shapes.get("model4.1.weight") == (1, 64, 7, 7):
        return "lineart"
    if shapes.get("conv1_1.weight") == (64, 3, 3, 3) and shapes.get("Mconv7_stage6_L2.weight") == (19, 128, 1, 1):
        return "openpose_body"
    if "pretrained.cls_token" in shapes and "depth_head.scratch.output_conv2.2.weight" in shapes:
        blocks = {k.split(".")[2] for k in shapes if k.startswith("pretrained.blocks.")}
        return "depth_anything_v2" if len(blocks) in (12, 24) and "pretrained.blocks.0.mlp.fc1.weight" in shapes else ""
    return ""


def examine_annotator(path: Path) -> FileKind:
    tensors, metadata, pickled = read_tensor_map(path)
    shapes = {name.removeprefix("module."): tuple(t.shape) for name, t in tensors.items()}
    layout = annotator_layout(shapes)
    labels = {
        "hed": "HED soft edges (softedge_hed, softedge_hedsafe, scribble_hed)",
        "lineart": "line drawing (lineart_realistic, lineart_coarse)",
        "openpose_body": "OpenPose body (openpose; CMU's weights: non-commercial use only)",
        "depth_anything_v2": "Depth Anything V2 (depth_anything_v2)",
    }
    return FileKind(
        "annotator",
        layout or "other",
        layout,
        labels.get(layout, "an annotator Easel does not run"),
        bool(layout),
        "" if layout else "not HED, the lineart generator, OpenPose's body model or Depth Anything V2 (S, B, L): Easel runs those",
        None,
        metadata,
        "pickle" if pickled else "safetensors",
    )


class AnnotatorRegistry(NetworkRegistry):
    noun = "annotator"
    family = "annotator"
    table = "annotators"
    folder_names = ANNOTATOR_FOLDERS
    suffixes = (".pth", ".pt", ".safetensors", ".bin")
    list_command = "annotators list"

    def examine_file(self, path: Path) -> FileKind:
        return examine_annotator(path)

    def short_hash(self, path: Path, sha256: str) -> str:
        return sha256[:10]

    def alias(self, path: Path, found: FileKind) -> str:
        return ""

    async def for_preprocessor(self, pre: Preprocessor) -> NetworkEntry:
        """The installed file `pre` runs with: of its network, the one named as the extension names
        it (sk_model2.pth is lineart_coarse's), else another of that network (Depth Anything V2's
        ViT-B for its ViT-L); EaselError naming the file and the folder otherwise."""
        entries = [e for e in await self.list(status="present") if e.loadable and e.layout == pre.annotator]
        wanted = pre.needs.lower()
        named = [e for e in entries if e.path.name.lower() == wanted]
        # Of one network's files, any (the largest first); lineart's two trainings by name only.
        others = sorted(entries, key=lambda e: -e.file_size) if pre.annotator != "lineart" else []
        found = (named or others or [None])[0]
        if found is None:
            raise EaselError(
                f"the {pre.name} preprocessor needs {pre.needs} (lllyasviel/Annotators on Hugging Face) in "
                f"models/{ANNOTATOR_FOLDERS[0]}; it is not installed"
            )
        return found


def with_annotator(use: ControlNetUse, entry: NetworkEntry) -> ControlNetUse:
    return replace(use, annotator=ComponentUse(entry.layout, entry.path.name, str(entry.path), entry.sha256))


def annotator_registry(db: aiosqlite.Connection, settings: Settings) -> AnnotatorRegistry:
    return AnnotatorRegistry(db, settings.models_dir.expanduser().resolve())
