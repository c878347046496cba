"""Convert a .ckpt/.pt checkpoint to .safetensors without torch and without running its pickle."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from bot.checkpoints.inspection import check_path, inspect_file, is_pickle_file
from bot.checkpoints.safetensors_header import read_header
from common.errors import CheckpointFileError
from common.pickle_reader import PickledTensor, by_storage, read_pickle_checkpoint
from common.safetensors_writer import write_safetensors
from common.tensors import TensorInfo


def convert_to_safetensors(path: Path, out: Path | None = None) -> Path:
    """Write `out` (default: PATH with a .safetensors suffix); refuse to overwrite anything."""
    check_path(path)
    if not is_pickle_file(path):
        raise CheckpointFileError(f"{path.name} is not a .ckpt/.pt checkpoint; nothing to convert")
    out = out or path.with_suffix(".safetensors")
    if out.suffix != ".safetensors":
        raise CheckpointFileError(f"{out}: the output must end in .safetensors")
    if out.exists():
        raise CheckpointFileError(f"{out} already exists; choose another output with --out")
    if not out.parent.is_dir():
        raise CheckpointFileError(f"{out.parent} is not a directory")
    inspection = inspect_file(path)  # validates the whole pickle through the allow-list first
    ckpt = read_pickle_checkpoint(path)
    metadata = {"format": "pt", "easel.converted_from": path.name}
    if inspection.architecture.family == "sd2" and inspection.architecture.reason == "":
        # global_step told us the prediction type; the .safetensors would lose that, so record it.
        metadata["modelspec.prediction_type"] = inspection.architecture.prediction
    tensors = by_storage(ckpt.tensors)  # each storage is decompressed once, whatever its views
    needed = sum(t.nbytes for t in tensors)
    free = shutil.disk_usage(out.parent).free
    if needed > free:
        raise CheckpointFileError(f"{out.parent} has {free:,} bytes free; the conversion needs {needed:,}")
    with zipfile.ZipFile(path) as archive:
        storages = ckpt.reader(archive)

        def read(t: TensorInfo) -> bytes:
            assert isinstance(t, PickledTensor)
            return storages.tensor_bytes(t)

        write_safetensors(out, tensors, read, metadata)
    read_header(out)  # the output must pass the same checks as any file we accept
    return out
