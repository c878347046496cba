""".ckpt/.pt files are read through the allow-list: nothing in them runs; conversion is exact."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bot.checkpoints.convert import convert_to_safetensors
from bot.checkpoints.inspection import inspect_file
from common.errors import CheckpointFileError
from common.pickle_reader import read_pickle_checkpoint


class Payload:
    """Pickles as a call to `func(*args)`: what a malicious checkpoint does on a naive torch.load."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def torch_like_zip(path: Path, payload: object, extra_members: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        z.writestr("archive/version", b"3\n")
        for name, data in (extra_members or {}).items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def sd1_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    from gpu_worker.testing.tiny import tiny_state_dict

    state = tiny_state_dict("sd1")
    state["nc"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # a non-contiguous view
    state["half"] = torch.randn(5).half()
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 470000, "epoch": 3}, path)
    return path, state


@pytest.fixture
def sd1_ckpt(sd1_source: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    source, state = sd1_source
    path = tmp_path / source.name
    shutil.copy(source, path)
    return path, state


def test_inspects_torch_zip_checkpoint_without_torch(sd1_ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = sd1_ckpt
    ins = inspect_file(path)
    assert ins.format == "ckpt"
    assert ins.architecture.family == "sd1" and ins.runnable
    assert ins.tensor_count == len(state)
    assert ins.parameters == sum(t.numel() for t in state.values())
    assert ins.extras["global_step"] == 470000


def test_convert_round_trips_every_tensor(sd1_ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = sd1_ckpt
    out = convert_to_safetensors(path)
    assert out == path.with_suffix(".safetensors")
    loaded = load_file(out)
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor.contiguous()), name
    assert inspect_file(out).architecture.family == "sd1"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_convert_refuses_to_overwrite(sd1_ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = sd1_ckpt
    path.with_suffix(".safetensors").write_bytes(b"precious")
    with pytest.raises(CheckpointFileError, match="already exists"):
        convert_to_safetensors(path)
    assert path.with_suffix(".safetensors").read_bytes() == b"precious"


def test_sd2_global_step_survives_conversion(tmp_path: Path) -> None:
    from gpu_worker.testing.tiny import tiny_state_dict

    path = tmp_path / "sd2.ckpt"
    torch.save({"state_dict": tiny_state_dict("sd2"), "global_step": 875000}, path)
    assert inspect_file(path).architecture.prediction == "epsilon"
    out = convert_to_safetensors(path)
    assert inspect_file(out).architecture.label == "SD2.x"


PAYLOADS = {
    "os.system": lambda marker: Payload(os.system, f"touch {marker}"),
    "subprocess.call": lambda marker: Payload(__import__("subprocess").call, ["touch", str(marker)]),
    "eval": lambda marker: Payload(eval, f"open({str(marker)!r}, 'w').close()"),
    "exec": lambda marker: Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    "builtins.open": lambda marker: Payload(open, str(marker), "w"),
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_zip_pickle_is_refused_and_nothing_runs(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = torch_like_zip(tmp_path / "evil.ckpt", {"state_dict": {"w": PAYLOADS[kind](marker)}})
    with pytest.raises(CheckpointFileError, match=r"unsafe pickle.*not on the allow-list"):
        inspect_file(path)
    with pytest.raises(CheckpointFileError, match="unsafe pickle"):
        convert_to_safetensors(path)
    assert not marker.exists()
    assert not path.with_suffix(".safetensors").exists()


def test_raw_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(CheckpointFileError, match=r"unsafe pickle: it asks for (posix|os)\.system"):
        inspect_file(path)
    assert not marker.exists()


def test_unexpected_zip_member_is_refused(tmp_path: Path) -> None:
    path = torch_like_zip(tmp_path / "odd.ckpt", {"state_dict": {}}, {"archive/payload.py": b"print('hi')"})
    with pytest.raises(CheckpointFileError, match=r"unexpected member 'archive/payload\.py'"):
        read_pickle_checkpoint(path)


def test_path_traversal_member_is_refused(tmp_path: Path) -> None:
    path = torch_like_zip(tmp_path / "odd.ckpt", {"state_dict": {}}, {"../evil": b"x"})
    with pytest.raises(CheckpointFileError, match="unexpected member"):
        read_pickle_checkpoint(path)


def test_legacy_torch_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFileError, match="legacy PyTorch format"):
        inspect_file(path)


def test_storage_missing_from_archive(sd1_ckpt: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    path, _ = sd1_ckpt
    broken = tmp_path / "broken.ckpt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointFileError, match="missing"):
        inspect_file(broken)


def test_garbage_ckpt(tmp_path: Path) -> None:
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointFileError, match="not a PyTorch checkpoint"):
        inspect_file(path)
