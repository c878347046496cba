"""`python bot.py …` end to end: inspect, convert, make-tiny-checkpoint, and every bad input."""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, run_bot_py


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_inspect_json_as_a_real_process(env: Path, tiny_dir: Path) -> None:
    proc = run_bot_py("inspect", str(tiny_dir / "tiny-sd1.safetensors"), "--json", cwd=env, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    for key in ("format", "architecture", "runnable", "sha256", "autov2", "autov1", "metadata"):
        assert key in info
    assert info["format"] == "safetensors" and info["architecture"] == "SD1.x" and info["runnable"] is True
    assert info["autov2"] == info["sha256"][:10] and info["autov1"] is not None  # the tiny SD1 file is > 2 MiB
    assert info["metadata"]["modelspec"]["architecture"] == "stable-diffusion-v1"


def test_inspect_text(cli, tiny_dir: Path) -> None:
    r = cli("inspect", str(tiny_dir / "tiny-sd2.safetensors"))
    assert r.code == 0
    assert "SD2.x v-prediction" in r.out and "AutoV2:" in r.out and "modelspec.title" in r.out


def test_inspect_reads_no_tensor_data(cli, env: Path) -> None:
    """A 3 GiB (sparse) file answers at once: the header is all that is read before hashing."""
    path = env / "big.safetensors"
    header = json.dumps({"t": {"dtype": "F16", "shape": [3 << 29], "data_offsets": [0, 3 << 30]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with open(path, "r+b") as f:
        f.truncate(8 + len(header) + (3 << 30))
    from bot.checkpoints.inspection import inspect_file

    assert inspect_file(path).parameters == 3 << 29


def _bad_files(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}

    def st(name: str, blob: bytes) -> None:
        files[name] = root / f"{name}.safetensors"
        files[name].write_bytes(blob)

    def header(h: object, data: bytes = b"") -> bytes:
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    good = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    st("truncated", header(good, b"\x00" * 3))
    st("header_beyond_file", struct.pack("<Q", 4096) + b"{}")
    st("header_over_100mb", struct.pack("<Q", 200_000_000) + b"{}")
    st("invalid_utf8", struct.pack("<Q", 4) + b"{\xff\xfe}")
    st("invalid_json", struct.pack("<Q", 4) + b"{ab}")
    st(
        "overlap",
        header(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\x00" * 12,
        ),
    )
    st(
        "gap",
        header(
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
            },
            b"\x00" * 12,
        ),
    )
    st("shape_mismatch", header({"t": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8))
    st("non_string_metadata", header({**good, "__metadata__": {"x": ["list"]}}, b"\x00" * 8))
    st("empty", b"")
    files["directory"] = root / "folder.safetensors"
    files["directory"].mkdir()
    files["does_not_exist"] = root / "absent.safetensors"
    evil = root / "evil.ckpt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", b"cposix\nsystem\n(Vtouch " + str(root / "PWNED").encode() + b"\ntR.")
        z.writestr("archive/version", b"3\n")
    files["os_system_pickle"] = evil
    members = root / "members.ckpt"
    with zipfile.ZipFile(members, "w") as z:
        z.writestr("archive/data.pkl", b"}.")
        z.writestr("archive/extra/run.sh", b"rm -rf /")
    files["unexpected_zip_member"] = members
    return files


REASONS = {
    "truncated": "truncated",
    "header_beyond_file": "runs past the end",
    "header_over_100mb": "100,000,000-byte limit",
    "invalid_utf8": "not valid UTF-8",
    "invalid_json": "not valid JSON",
    "overlap": "overlaps",
    "gap": "gap in tensor data",
    "shape_mismatch": "needs 6",
    "non_string_metadata": "must be strings",
    "empty": "file is empty",
    "directory": "is a directory",
    "does_not_exist": "no such file",
    "os_system_pickle": "unsafe pickle: it asks for posix.system",
    "unexpected_zip_member": "unexpected member 'archive/extra/run.sh'",
}


@pytest.mark.parametrize("case", sorted(REASONS))
def test_bad_file_one_line_nonzero_nothing_written(cli, env: Path, case: str) -> None:
    bad_root = env / "bad"
    bad_root.mkdir()
    path = _bad_files(bad_root)[case]
    before = tree(env)
    for command in (["inspect", str(path)], ["inspect", str(path), "--json"], ["convert", str(path)]):
        r = cli(*command)
        assert r.code != 0, (command, r.out)
        assert r.out == ""
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        if command[0] == "inspect" or case in ("does_not_exist", "directory"):
            assert REASONS[case] in lines[0]
    assert tree(env) == before  # no database, no converted file, no marker from the pickle
    assert not (bad_root / "PWNED").exists()


def test_convert_via_cli(cli, env: Path) -> None:
    import torch

    from gpu_worker.testing.tiny import tiny_state_dict

    ckpt = env / "m.ckpt"
    torch.save({"state_dict": tiny_state_dict("sd1")}, ckpt)
    r = cli("convert", str(ckpt), "--out", str(env / "m-converted.safetensors"))
    assert r.code == 0, r.err
    r = cli("inspect", str(env / "m-converted.safetensors"), "--json")
    info = json.loads(r.out)
    assert info["architecture"] == "SD1.x" and info["metadata"]["other"]["easel.converted_from"] == "m.ckpt"
    r = cli("inspect", str(ckpt))
    assert "python bot.py convert" in r.out


@pytest.mark.slow
def test_make_tiny_checkpoint_via_cli(cli, env: Path) -> None:
    r = cli("make-tiny-checkpoint", "--arch", "sd2", "out/tiny.safetensors")
    assert r.code == 0, r.err
    info = json.loads(cli("inspect", "out/tiny.safetensors", "--json").out)
    assert info["architecture"] == "SD2.x v-prediction"
    bad = cli("make-tiny-checkpoint", "--arch", "sd1", "out/tiny.ckpt")
    assert bad.code == 1 and "must end in .safetensors" in bad.err


def test_bot_process_does_not_import_torch(env: Path, tiny_dir: Path) -> None:
    code = (
        "import sys; from cli import main; "
        f"main(['inspect', {str(tiny_dir / 'tiny-sd1.safetensors')!r}]); "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'"
    )
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "EASEL_DATA_DIR": str(env / "data")},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
