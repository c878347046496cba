"""A remote worker's files by sha256 (gpu_worker/model_index.py): found under any name, hashed once,
hashed again when changed, and a batch's files replaced by the worker's own or refused."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from common.protocol import JobPart, LoadRequest, LoraUse, RunBatch
from gpu_worker.model_index import CACHE_NAME, ModelIndex
from gpu_worker.worker import LocalFileError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def batch(checkpoint: bytes, lora: bytes | None = None) -> RunBatch:
    load = LoadRequest("/bot/models/x.safetensors", "x", "sd1", "SD1.x", "safetensors", "sd1", sha256=sha(checkpoint))
    loras = (
        (LoraUse("style", "/bot/models/Lora/style.safetensors", sha(lora), sha(lora)[:12], 1.0, 1.0),) if lora else ()
    )
    return RunBatch.of("b1", load, (JobPart("j1", "a cat", "", (1,)),), 64, 64, 4, 7.0, "Euler", "Automatic", loras=loras)


def test_files_are_found_by_hash_under_any_name(tmp_path: Path) -> None:
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "renamed.safetensors").write_bytes(b"checkpoint")
    (tmp_path / "Lora").mkdir()
    (tmp_path / "Lora" / "mine.safetensors").write_bytes(b"lora")
    (tmp_path / "notes.txt").write_bytes(b"not a model")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.safetensors").write_bytes(b"skipped")
    index = ModelIndex(tmp_path)
    assert index.scan() == 2 and set(index.holds) == {sha(b"checkpoint"), sha(b"lora")}
    local = index.localise(batch(b"checkpoint", b"lora"))
    assert local.load.path == str(tmp_path / "deep" / "er" / "renamed.safetensors")
    assert local.loras[0].path == str(tmp_path / "Lora" / "mine.safetensors")
    assert dataclasses.replace(local, load=batch(b"checkpoint").load, loras=()) == batch(b"checkpoint")
    # Hashed once: a second index reads the cache instead of the files.
    assert ModelIndex(tmp_path).scan() == 0 and (tmp_path / CACHE_NAME).exists()


def test_a_missing_or_changed_file_is_refused_by_name(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"checkpoint")
    index = ModelIndex(tmp_path)
    index.scan()
    with pytest.raises(LocalFileError, match=r"does not hold LoRA style \[[0-9a-f]{10}\]"):
        index.localise(batch(b"checkpoint", b"lora"))
    # Changed since it was hashed (same size, a later time): hashed again before use, and refused.
    model.write_bytes(b"CHECKPOINT")
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    with pytest.raises(LocalFileError, match="does not hold checkpoint x"):
        index.localise(batch(b"checkpoint"))
    assert index.scan() == 1 and index.holds == (sha(b"CHECKPOINT"),)
    model.unlink()
    assert index.scan() == 0 and index.holds == ()


def test_a_damaged_hash_cache_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").write_bytes(b"checkpoint")
    for damaged in ("{not json", '{"m.safetensors": [1, 2, "short"]}', "[]", '{"m.safetensors": "x"}'):
        (tmp_path / CACHE_NAME).write_text(damaged)
        index = ModelIndex(tmp_path)
        assert index.scan() == 1 and index.holds == (sha(b"checkpoint"),)


def test_a_detail_pass_detector_is_the_workers_own_copy_or_refused_by_name(tmp_path: Path) -> None:
    from common.protocol import ComponentUse, DetectorUse
    from gpu_worker.model_fetch import batch_hashes

    (tmp_path / "adetailer").mkdir()
    (tmp_path / "adetailer" / "hands.pt").write_bytes(b"detector")
    (tmp_path / "m.safetensors").write_bytes(b"checkpoint")
    index = ModelIndex(tmp_path)
    index.scan()
    hands = DetectorUse("hands", ComponentUse("detect", "hand_yolov8n.pt", "/bot/models/adetailer/hand_yolov8n.pt", sha(b"detector")))
    faces = DetectorUse("faces")  # the picture check's detector: no file
    asked = dataclasses.replace(batch(b"checkpoint"), detectors=(faces, hands))
    assert sha(b"detector") in batch_hashes(asked)
    local = index.localise(asked)
    assert local.detectors == (faces, dataclasses.replace(hands, detector=dataclasses.replace(hands.detector, path=str(tmp_path / "adetailer" / "hands.pt"))))
    (tmp_path / "adetailer" / "hands.pt").unlink()
    index.scan()
    with pytest.raises(LocalFileError, match=r"does not hold detector hand_yolov8n\.pt \["):
        index.localise(asked)
