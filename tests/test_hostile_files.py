"""Hostile and careless files through the real entry points: one line each, nothing crashes or leaks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import zipfile
from pathlib import Path

import pytest
import torch

from bot.checkpoints.convert import convert_to_safetensors
from bot.checkpoints.inspection import inspect_file
from common import safe_pickle
from common.errors import CheckpointFileError
from common.pickle_reader import read_pickle_checkpoint
from tests.conftest import run_bot_py
from tests.helpers import with_metadata
from tests.hostile_files import HOSTILE, build_on_storage_type, hostile_checkpoints, torch_zip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return hostile_checkpoints(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_is_refused_in_one_line(cli, env: Path, hostile: dict[str, tuple[Path, str]], case: str) -> None:
    source, reason = hostile[case]
    path = env / source.name
    shutil.copy(source, path)
    before = sorted(p.name for p in env.iterdir())
    for command in (["inspect", str(path)], ["inspect", str(path), "--json"], ["convert", str(path)]):
        r = cli(*command)
        lines = r.err.strip().splitlines()
        assert r.code == 1 and r.out == "", (command, r.out)
        assert len(lines) == 1 and lines[0].startswith("error: "), r.err
        if command[0] == "inspect" or not case.endswith(".safetensors"):
            assert reason in lines[0], lines[0]
    assert sorted(p.name for p in env.iterdir()) == before  # nothing written, nothing half-written


def test_scan_as_a_process_registers_the_good_and_reports_each_bad(
    env: Path, models: Path, hostile: dict[str, tuple[Path, str]], tiny_dir: Path
) -> None:
    """The files that crashed the process (segfault) or stopped the scan: a real process, a real scan."""
    for path, _ in hostile.values():
        shutil.copy(path, models / path.name)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "good.safetensors")
    shutil.copy(tiny_dir / "tiny-sd2.safetensors", models / "UPPER.SAFETENSORS")
    shutil.copy(tiny_dir / "tiny-sdxl.safetensors", models / "short.sft")
    proc = run_bot_py("checkpoints", "scan", "--json", cwd=env, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert sorted(report["added"]) == ["good", "short", "upper"]
    listed = json.loads(run_bot_py("checkpoints", "list", "--json", cwd=env, env={**os.environ}).stdout)
    assert all(e["runnable"] for e in listed) and len(listed) == 3
    skipped = {e["path"]: e["reason"] for e in report["errors"]}
    for name, (_, reason) in hostile.items():
        assert reason in skipped[name], (name, skipped[name])


def test_build_cannot_change_how_later_files_are_read(env: Path) -> None:
    """The attack rewrote a shared stand-in's dtype; stand-ins are per load and BUILD on them is refused."""
    attack = torch_zip(env / "attack.ckpt", build_on_storage_type())
    with pytest.raises(CheckpointFileError, match="with BUILD"):
        inspect_file(attack)
    assert safe_pickle.ALLOWED[("torch", "FloatStorage")] == safe_pickle.StorageType("F32")
    genuine = env / "genuine.ckpt"
    weights = torch.randn(3, 4)
    torch.save({"w": weights, "h": weights.half()}, genuine)
    from safetensors.torch import load_file

    loaded = load_file(convert_to_safetensors(genuine))
    assert torch.equal(loaded["w"], weights) and torch.equal(loaded["h"], weights.half())


def test_views_of_one_storage_are_decompressed_once(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = torch.randn(100 * 64)
    slices = {f"s{i:03d}": base[i * 64 : (i + 1) * 64] for i in range(100)}
    path = env / "slices.ckpt"
    torch.save(slices, path)
    opened: list[str] = []
    original = zipfile.ZipFile.open

    def counting_open(self: zipfile.ZipFile, name: str | zipfile.ZipInfo, *args: object, **kwargs: object):
        opened.append(name if isinstance(name, str) else name.filename)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", counting_open)
    from safetensors.torch import load_file

    loaded = load_file(convert_to_safetensors(path))
    assert all(torch.equal(loaded[k], v) for k, v in slices.items())
    storage_reads = [name for name in opened if "/data/" in name]
    assert len(storage_reads) == 1, storage_reads


def test_overlapping_views_that_multiply_data_are_refused(env: Path) -> None:
    base = torch.randn(1 << 16)
    path = env / "views.ckpt"
    torch.save({f"v{i}": base[i:] for i in range(100)}, path)
    with pytest.raises(CheckpointFileError, match="views that repeat data"):
        read_pickle_checkpoint(path)


def test_lone_surrogate_in_metadata_prints_and_registers(cli, models: Path, tiny_dir: Path) -> None:
    path = with_metadata(tiny_dir / "tiny-sd1.safetensors", models / "odd.safetensors", {"modelspec.title": "a\ud800b"})
    r = cli("inspect", str(path))
    assert r.code == 0 and "a\ufffdb" in r.out
    r = cli("checkpoints", "add", str(path))
    assert r.code == 0, r.err
    r = cli("checkpoints", "show", "odd", "--json")
    assert json.loads(r.out)["display_name"] == "a\ufffdb"


def test_non_string_merge_parent_does_not_break_catalog_show(cli, models: Path, tiny_dir: Path) -> None:
    sha = "b" * 64
    recipe = json.dumps({"type": "webui", "primary_model_hash": sha, "calc": "weighted_sum"})
    parents = json.dumps({sha: {"name": ["not", {"a": "string"}]}})
    path = with_metadata(
        tiny_dir / "tiny-sd1.safetensors",
        models / "merged.safetensors",
        {"sd_merge_recipe": recipe, "sd_merge_models": parents},
    )
    assert cli("checkpoints", "add", str(path)).code == 0
    r = cli("catalog", "show", "merged")
    assert r.code == 0, r.err
    assert cli("checkpoints", "show", "merged").code == 0


# --- confinement: one rule for every path ----------------------------------------------------------


def test_symlinked_sidecars_outside_the_models_folder_are_not_read(
    cli, env: Path, models: Path, tiny_dir: Path
) -> None:
    secret = env / "secret.txt"
    secret.write_text('{"description": "the secret", "model": {"name": "leak"}}')
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "m.safetensors")
    (models / "m.preview.png").symlink_to(secret)
    (models / "m.civitai.info").symlink_to(secret)
    (models / "m.json").symlink_to(secret)
    (models / "m.yaml").symlink_to(secret)
    r = cli("checkpoints", "add", "m.safetensors")
    assert r.code == 0, r.err
    shown = json.loads(cli("checkpoints", "show", "m", "--json").out)
    assert "secret" not in json.dumps(shown) and "leak" not in json.dumps(shown)
    assert not shown.get("preview_path")


def test_preview_read_refuses_a_link_made_after_registration(env: Path, models: Path) -> None:
    from bot.checkpoints.sidecars import read_preview

    preview = models / "m.preview.png"
    preview.write_bytes(b"\x89PNG fine")
    assert read_preview(str(preview), models, 1 << 20) == b"\x89PNG fine"
    (env / "secret.txt").write_text("secret")
    preview.unlink()
    preview.symlink_to(env / "secret.txt")
    assert read_preview(str(preview), models, 1 << 20) is None


def test_merge_inputs_and_vae_obey_the_models_folder(cli, env: Path, models: Path, tiny_dir: Path) -> None:
    outside = env / "elsewhere"
    outside.mkdir()
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", outside / "x.safetensors")
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "a.safetensors")
    before = sorted(p.name for p in models.iterdir())
    for args in (
        ["--primary", str(outside / "x.safetensors"), "--method", "copy"],
        ["--primary", "a.safetensors", "--secondary", str(outside / "x.safetensors"), "--method", "weighted_sum"],
        ["--primary", "a.safetensors", "--method", "copy", "--bake-vae", "../elsewhere/x.safetensors"],
        ["--primary", "../elsewhere/x.safetensors", "--method", "copy"],
    ):
        r = cli("merge", *args)
        assert r.code == 1 and "outside the models directory" in r.err, (args, r.err)
    (models / "link.safetensors").symlink_to(outside / "x.safetensors")
    r = cli("merge", "--primary", "link.safetensors", "--method", "copy")
    assert r.code == 1 and "outside the models directory" in r.err
    assert sorted(p.name for p in models.iterdir()) == [*before, "link.safetensors"]
    assert cli("checkpoints", "list", "--json").out.strip() in ("[]", "")


# --- the database file --------------------------------------------------------------------------------


def _db_cases(data: Path) -> dict[str, Path]:
    data.mkdir(exist_ok=True)
    garbage = data / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 300)
    truncated = data / "truncated.sqlite3"
    conn = sqlite3.connect(truncated)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(200),) for _ in range(200)])
    conn.commit()
    conn.close()
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    directory = data / "directory.sqlite3"
    directory.mkdir()
    return {"garbage": garbage, "truncated": truncated, "directory": directory}


@pytest.mark.parametrize("case", ["garbage", "truncated", "directory", "missing_table"])
def test_a_bad_database_file_is_one_line_and_left_as_it_was(env: Path, case: str) -> None:
    data = env / "data"
    if case == "missing_table":
        assert run_bot_py("checkpoints", "list", cwd=env, env={**os.environ}).returncode == 0
        path = data / "easel.sqlite3"
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE checkpoint_tags")
        conn.commit()
        conn.close()
    else:
        path = _db_cases(data)[case]
        target = data / "easel.sqlite3"
        path.rename(target)
        path = target
    before = _fingerprint(path)
    proc = run_bot_py("checkpoints", "list", cwd=env, env={**os.environ})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(path.name) in lines[0] and ("move it aside" in lines[0] or "restore" in lines[0]), lines[0]
    assert _fingerprint(path) == before


def _fingerprint(path: Path) -> str:
    if path.is_dir():
        return "directory"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_undecodable_command_line_text_is_refused_in_one_line(env: Path, models: Path, tiny_dir: Path) -> None:
    """Invalid UTF-8 in argv reaches Python as lone surrogates (surrogateescape): never stored, never printed."""
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "m.safetensors")
    environment = {**os.environ}
    assert run_bot_py("checkpoints", "add", "m.safetensors", cwd=env, env=environment).returncode == 0
    for args in (
        ("checkpoints", "edit", "m", "--description", "caf\udcff"),
        ("checkpoints", "add", "m.safetensors", "--name", "other", "--tags", "a,\udcfe"),
        ("generate", "--checkpoint", "m", "--prompt", "a \udcff cat", "--steps", "1", "--out", "out"),
    ):
        proc = run_bot_py(*args, cwd=env, env=environment)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and "not valid text" in lines[0], (args, proc.stderr)
    shown = json.loads(run_bot_py("checkpoints", "show", "m", "--json", cwd=env, env=environment).stdout)
    assert shown["description"] == ""


def test_what_is_kept_of_a_files_metadata_is_bounded(tmp_path: Path) -> None:
    """The registry stores a file's metadata and parses it again on every listing (autocomplete too):
    however much a file holds, at most 1,000 keys are read and about 256 KiB of them kept."""
    from tests.hostile_files import safetensors

    metadata = {f"k{i}": "v" * 60_000 for i in range(1000)} | {"x" * 1_000_000: "long key"}
    header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "__metadata__": metadata}
    with pytest.raises(CheckpointFileError, match="metadata has 1,001 keys, over the limit of 1,000"):
        inspect_file(safetensors(tmp_path / "over.safetensors", json.dumps(header).encode(), bytes(4)))
    del metadata["k0"]
    path = safetensors(tmp_path / "fat.safetensors", json.dumps(header).encode(), bytes(4))
    kept = json.dumps(inspect_file(path).to_dict())
    assert len(kept) < 400_000 and "x" * 201 not in kept and "60,000 characters, not shown" in kept
