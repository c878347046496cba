"""Easel's demo model: a small checkpoint shipped with the code, trained on a CPU by
tools/train_demo_model.py to draw coloured shapes on coloured backgrounds. It makes a first try
mean something without a download: the playground runs it when the models folder has no checkpoint,
and `python bot.py generate --checkpoint demo` reaches it with no set-up.

Beside it, `easel-demo.json` is its A1111 user-metadata file (description, notes): copied into a
models folder with the model, it is what /checkpoints info shows; and `easel-demo-paper.safetensors`,
a LoRA for it (trained by the same script) that puts every shape on a white background.
"""

from __future__ import annotations

import filecmp
import functools
import hashlib
import os
import shutil
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_FILE = HERE / "easel-demo.safetensors"
DEMO_SIDECAR = HERE / "easel-demo.json"
DEMO_LORA = HERE / "easel-demo-paper.safetensors"  # a LoRA for it: every shape on a white background
DEMO_REF = "demo"  # what `generate --checkpoint` takes for it
# What every picture of the demo model says beside it: what it is and how to go further.
DEMO_NOTE = (
    "Easel's demo model draws only coloured shapes on coloured backgrounds, 64x64 "
    '(try "a red circle on a blue background"). For real pictures, add a checkpoint: '
    "/admin download civitai:<id>, or a .safetensors file in the models folder, then /admin scan."
)


@functools.cache
def demo_sha256() -> str:
    """The shipped file's hash; "" where an installation left it out (nothing is then the demo)."""
    digest = hashlib.sha256()
    try:
        with DEMO_FILE.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return ""
    return digest.hexdigest()


def is_demo(sha256: str) -> bool:
    return bool(sha256) and sha256 == demo_sha256()


def install_demo(models_dir: Path) -> Path:
    """The demo model and its description copied into `models_dir`, its LoRA into `models_dir/Lora`,
    unless the same files are there already (an older demo is replaced). Each file is written beside
    its final name and renamed, so a stop half-way leaves no half-written file for a scan to find."""
    # The description before the model: a scan that sees the model sees its description too.
    for source, target in (
        (DEMO_SIDECAR, models_dir / DEMO_SIDECAR.name),
        (DEMO_FILE, models_dir / DEMO_FILE.name),
        (DEMO_LORA, models_dir / "Lora" / DEMO_LORA.name),
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            continue
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            shutil.copyfile(source, temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
    return models_dir / DEMO_FILE.name
