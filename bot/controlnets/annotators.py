"""Annotator models some ControlNet preprocessors run (lllyasviel/Annotators' files), in
`models/ControlNetPreprocessor` (Forge's folder; the A1111 extension keeps the same files under its
`annotator/downloads`), registered and hashed like every model file (bot/networks/registry.py does
the work), and the one a unit's preprocessor runs with.

Which network a file holds is read from its tensors' names and shapes (gpu_worker/annotators.py
builds the same): HED (`ControlNetHED.pth`) and the line drawing generator (`sk_model.pth`,
`sk_model2.pth`: one network, two trainings, told apart by name as the extension does), the anime
line drawing U-Net (`netG.pth`), MiDaS' DPT-Hybrid (`dpt_hybrid-midas-501f0c75.pt`), PiDiNet (`table5_pidinet.pth`), M-LSD (`mlsd_large_512_fp32.pth`), OpenPose's body, hand and face models (`body_pose_model.pth`, `hand_pose_model.pth`, `facenet.pth`)
and Depth Anything V2 (`depth_anything_v2_vit?.pth`, `depth_anything_v2_vitl.safetensors`) and V1
(`depth_anything_vitl14.pth`: the same tensors' names; told apart by file name, as the extension does). Other annotator files are registered as not run, named. A `.pth` is vetted by the allow-list pickle reader.
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
    if shapes.get("model.model.0.weight", ())[1:] == (3, 4, 4) and shapes.get("model.model.3.weight", ())[1:] == (1, 4, 4):
        return "lineart_anime"  # pix2pix's U-Net generator (netG.pth)
    if shapes.get("conv1_1.weight") == (64, 3, 3, 3) and shapes.get("Mconv7_stage6_L2.weight") == (19, 128, 1, 1):
        return "openpose_body"
    if shapes.get("conv1_1.weight") == (64, 3, 3, 3) and shapes.get("Mconv7_stage6.weight") in ((22, 128, 1, 1), (71, 128, 1, 1)):
        return "openpose_hand" if shapes["Mconv7_stage6.weight"][0] == 22 else "openpose_face"
    if shapes.get("backbone.features.0.0.weight") == (32, 4, 3, 3) and shapes.get("block23.conv3.weight") == (16, 64, 1, 1):
        return "mlsd"  # M-LSD large (mlsd_large_512_fp32.pth)
    if shapes.get("init_block.weight", ())[1:] == (3, 3, 3) and shapes.get("classifier.weight") == (1, 4, 1, 1):
        return "pidinet"  # PiDiNet (table5_pidinet.pth)
    if "pretrained.model.patch_embed.backbone.stem.conv.weight" in shapes and "scratch.output_conv.4.weight" in shapes:
        return "midas"  # MiDaS v3 DPT-Hybrid (dpt_hybrid-midas-501f0c75.pt)
    if "pretrained.cls_token" in shapes and "depth_head.scratch.output_conv2.2.weight" in shapes:
        blocks = {k.split(".")[2] for k in shapes if k.startswith("pretrained.blocks.")}
        return "depth_anything_v2" if len(blocks) in (12, 24) and "pretrained.blocks.0.mlp.fc1.weight" in shapes else ""
    return ""


def examine_annotator(path: Path) -> FileKind:
    tensors, metadata, pickled = read_tensor_map(path)
    shapes = {name.removeprefix("module."): tuple(t.shape) for name, t in tensors.items()}
    layout = annotator_layout(shapes)
    if layout == "depth_anything_v2" and "v2" not in path.name.lower():  # V1's file: the same names, other taps
        layout = "depth_anything"
    labels = {
        "hed": "HED soft edges (softedge_hed, softedge_hedsafe, scribble_hed)",
        "lineart": "line drawing (lineart_realistic, lineart_coarse)",
        "openpose_body": "OpenPose body (openpose; CMU's weights: non-commercial use only)",
        "openpose_hand": "OpenPose hands (openpose_hand, openpose_full; CMU's weights: non-commercial use only)",
        "openpose_face": "OpenPose face (openpose_face, openpose_full; CMU's weights: non-commercial use only)",
        "depth_anything_v2": "Depth Anything V2 (depth_anything_v2)",
        "depth_anything": "Depth Anything V1 (depth_anything)",
        "lineart_anime": "anime line drawing (lineart_anime)",
        "midas": "MiDaS DPT-Hybrid depth (depth_midas)",
        "pidinet": "PiDiNet soft edges (softedge_pidinet, softedge_pidisafe, scribble_pidinet)",
        "mlsd": "M-LSD straight lines (mlsd)",
    }
    return FileKind(
        "annotator",
        layout or "other",
        layout,
        labels.get(layout, "an annotator Easel does not run"),
        bool(layout),
        "" if layout else "not HED, the lineart generators (realistic, anime), OpenPose's body, hand or face model, MiDaS DPT-Hybrid, PiDiNet, M-LSD or Depth Anything V1/V2 (S, B, L): Easel runs those",
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

    async def for_preprocessor(self, pre: Preprocessor) -> list[NetworkEntry]:
        """The installed files `pre` runs with, one per network: the one named as the extension
        names it (sk_model2.pth is lineart_coarse's), else another of that network (Depth Anything
        V2's ViT-B for its ViT-L); EaselError naming the files missing and the folder otherwise."""
        present = [e for e in await self.list(status="present") if e.loadable]
        found, missing = [], []
        for layout, file_name in pre.annotators:
            entries = [e for e in present if e.layout == layout]
            named = [e for e in entries if e.path.name.lower() == file_name.lower()]
            # Of one network's files, any (the largest first); lineart's two trainings by name only.
            others = sorted(entries, key=lambda e: -e.file_size) if layout != "lineart" else []
            chosen = (named or others or [None])[0]
            if chosen is None:
                missing.append(file_name)
            else:
                found.append(chosen)
        if missing:
            raise EaselError(
                f"the {pre.name} preprocessor needs {' and '.join(missing)} (lllyasviel/Annotators on Hugging Face) in "
                f"models/{ANNOTATOR_FOLDERS[0]}; {'it is' if len(missing) == 1 else 'they are'} not installed"
            )
        return found


def with_annotators(use: ControlNetUse, entries: list[NetworkEntry]) -> ControlNetUse:
    return replace(use, annotators=tuple(ComponentUse(e.layout, e.path.name, str(e.path), e.sha256) for e in entries))


def annotator_registry(db: aiosqlite.Connection, settings: Settings) -> AnnotatorRegistry:
    return AnnotatorRegistry(db, settings.models_dir.expanduser().resolve())
