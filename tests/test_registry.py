"""The registry through the CLI: add, list, show, remove, scan, sidecars, and every refusal."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def listing(cli) -> list[dict]:
    result = cli("checkpoints", "list", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_add_list_show_remove(cli, add_tiny) -> None:
    add_tiny("sdxl", "My Model v2.safetensors")
    r = cli(
        "checkpoints", "add", "My Model v2.safetensors", "--tags", "Anime, test", "--description", "a test", "--nsfw"
    )
    assert r.code == 0, r.err
    assert "registered my-model-v2" in r.out
    [entry] = listing(cli)
    assert entry["name"] == "my-model-v2"
    assert entry["architecture"] == "SDXL base" and entry["runnable"] and entry["pipeline_config"] == "tiny-sdxl"
    assert entry["tags"] == ["anime", "test"] and entry["nsfw"] and entry["description"] == "a test"
    assert len(entry["sha256"]) == 64 and entry["autov2"] == entry["sha256"][:10]

    shown = cli("checkpoints", "show", entry["autov2"].upper(), "--json")  # by hash, as Civitai prints it
    assert json.loads(shown.out)["name"] == "my-model-v2"
    text = cli("checkpoints", "show", "my-model-v2")
    assert "SDXL base" in text.out and "anime, test" in text.out

    r = cli("checkpoints", "remove", "my-model-v2")
    assert r.code == 0 and "left in place" in r.out
    assert listing(cli) == []


def test_remove_keeps_the_file(cli, add_tiny) -> None:
    path = add_tiny("sd1")
    cli("checkpoints", "add", str(path))
    cli("checkpoints", "remove", "tiny-sd1")
    assert path.exists()


def test_duplicates_are_refused(cli, add_tiny) -> None:
    path = add_tiny("sd1")
    assert cli("checkpoints", "add", str(path)).code == 0
    again = cli("checkpoints", "add", str(path))
    assert again.code == 1 and "already registered as 'tiny-sd1'" in again.err
    shutil.copy(path, path.with_name("copy.safetensors"))
    twin = cli("checkpoints", "add", "copy.safetensors")
    assert twin.code == 1 and "same content" in twin.err and "tiny-sd1" in twin.err
    assert len(listing(cli)) == 1


def test_names_are_unique_slugs(cli, add_tiny, tiny_dir: Path) -> None:
    add_tiny("sd1", "a/Model.safetensors")
    add_tiny("sd2", "b/Model.safetensors")
    assert cli("checkpoints", "add", "a/Model.safetensors").code == 0
    assert cli("checkpoints", "add", "b/Model.safetensors").code == 0
    assert sorted(e["name"] for e in listing(cli)) == ["model", "model-2"]
    add_tiny("sdxl", "c.safetensors")
    taken = cli("checkpoints", "add", "c.safetensors", "--name", "Model")
    assert taken.code == 1 and "already taken" in taken.err


def test_paths_outside_the_models_directory_are_refused(cli, env: Path, models: Path, tiny_dir: Path) -> None:
    outside = env / "outside.safetensors"
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", outside)
    r = cli("checkpoints", "add", str(outside))
    assert r.code == 1 and "outside the models directory" in r.err
    r = cli("checkpoints", "add", str(models / ".." / "outside.safetensors"))
    assert r.code == 1 and "outside the models directory" in r.err
    os.symlink(outside, models / "link.safetensors")
    r = cli("checkpoints", "add", str(models / "link.safetensors"))
    assert r.code == 1 and "outside the models directory" in r.err
    scan = json.loads(cli("checkpoints", "scan", "--json").out)
    assert scan["added"] == []
    assert scan["errors"] == [
        {"path": "link.safetensors", "reason": "links outside the models directory; not registered"}
    ]
    assert listing(cli) == []


def test_symlink_inside_the_models_directory_is_fine(cli, add_tiny, models: Path) -> None:
    real = add_tiny("sd1", "store/real.safetensors")
    os.symlink(real, models / "alias.safetensors")
    r = cli("checkpoints", "add", str(models / "alias.safetensors"))
    assert r.code == 0, r.err
    assert listing(cli)[0]["relative_path"] == "store/real.safetensors"


def test_bad_file_is_not_registered(cli, models: Path) -> None:
    (models / "broken.safetensors").write_bytes(b"\x00" * 4)
    r = cli("checkpoints", "add", "broken.safetensors")
    assert r.code == 1 and "truncated" in r.err and len(r.err.strip().splitlines()) == 1
    assert listing(cli) == []


def test_scan_adds_marks_missing_restores_and_updates(cli, add_tiny, models: Path) -> None:
    add_tiny("sd1", "one.safetensors")
    add_tiny("sdxl", "sub/two.safetensors")
    (models / "bad.ckpt").write_bytes(b"junk")
    (models / "vae.vae.safetensors").write_bytes(b"skipped by name")
    (models / ".hidden").mkdir()
    add_tiny("sd2", ".hidden/three.safetensors")
    report = json.loads(cli("checkpoints", "scan", "--json").out)
    assert sorted(report["added"]) == ["one", "two"]
    assert report["errors"] == [
        {"path": "bad.ckpt", "reason": "bad.ckpt: not a PyTorch checkpoint (expected a torch.save zip archive)"}
    ]

    moved = models / "one.safetensors"
    moved.rename(models / "one.bak")
    report = json.loads(cli("checkpoints", "scan", "--json").out)
    assert report["missing"] == ["one"] and report["unchanged"] == 1
    assert {e["name"]: e["status"] for e in listing(cli)} == {"one": "missing", "two": "present"}

    (models / "one.bak").rename(moved)
    report = json.loads(cli("checkpoints", "scan", "--json").out)
    assert report["restored"] == ["one"]

    before = {e["name"]: e["sha256"] for e in listing(cli)}
    add_tiny("sd2", "one.safetensors")  # the same path now holds another model
    report = json.loads(cli("checkpoints", "scan", "--json").out)
    assert report["updated"] == ["one"]
    after = {e["name"]: e for e in listing(cli)}
    assert after["one"]["sha256"] != before["one"] and after["one"]["architecture"] == "SD2.x v-prediction"


def test_scan_reads_a1111_sidecars(cli, add_tiny, models: Path) -> None:
    add_tiny("sd2", "v2.safetensors")
    (models / "v2.yaml").write_text(
        'model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: "v"\n'
    )
    (models / "v2.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (models / "v2.civitai.info").write_text(
        json.dumps(
            {
                "id": 11,
                "modelId": 22,
                "name": "v1.0",
                "baseModel": "SD 2.1 768",
                "trainedWords": ["sks style"],
                "description": "<p>Painterly <b>landscapes</b></p>",
                "model": {"name": "Painter", "tags": ["Landscapes", "painting"], "nsfw": False},
            }
        )
    )
    (models / "v2.json").write_text(
        json.dumps({"description": "my notes", "activation text": "sks style", "sd version": "SD2"})
    )
    add_tiny("sd1", "other.safetensors")
    (models / "other.json").write_text("{not json")
    report = json.loads(cli("checkpoints", "scan", "--json").out)
    assert sorted(report["added"]) == ["other", "v2"]  # a bad sidecar does not block its checkpoint
    entry = json.loads(cli("checkpoints", "show", "v2", "--json").out)
    assert entry["sidecars"]["yaml"]["parameterization"] == "v"
    assert entry["sidecars"]["preview"] == "v2.preview.png"
    assert entry["sidecars"]["civitai"]["trained_words"] == ["sks style"]
    assert entry["sidecars"]["civitai"]["description"] == "Painterly landscapes"
    assert entry["sidecars"]["user_metadata"]["activation text"] == "sks style"
    assert entry["description"] == "my notes"  # the user's own note wins over Civitai's
    assert entry["tags"] == ["landscapes", "painting"]


def test_yaml_sidecar_decides_sd2_prediction(cli, add_tiny, models: Path, tmp_path: Path) -> None:
    from bot.checkpoints.safetensors_header import read_header

    path = add_tiny("sd2", "eps.safetensors")
    # Drop the file's own modelspec.prediction_type so only the yaml can tell.
    header = read_header(path)
    assert header.metadata["modelspec.prediction_type"] == "v"
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file(
        tensors, str(path), metadata={k: v for k, v in header.metadata.items() if k != "modelspec.prediction_type"}
    )
    (models / "eps.yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    r = cli("checkpoints", "add", "eps.safetensors", "--json")
    assert json.loads(r.out)["architecture"] == "SD2.x" and json.loads(r.out)["prediction"] == "epsilon"


def test_unknown_name(cli) -> None:
    r = cli("checkpoints", "show", "nothing-here")
    assert r.code == 1 and "no checkpoint named 'nothing-here'" in r.err


def test_missing_models_directory_is_explained(cli, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(env / "nowhere"))
    r = cli("checkpoints", "scan")
    assert r.code == 1 and "models directory" in r.err and "EASEL_MODELS_DIR" in r.err


def test_edit_a_catalog_entry(cli, add_tiny) -> None:
    add_tiny("sd1", "one.safetensors")
    add_tiny("sdxl", "two.safetensors")
    cli("checkpoints", "scan")
    r = cli(
        "checkpoints",
        "edit",
        "one",
        "--rename",
        "Dream Shaper",
        "--description",
        "soft light",
        "--tags",
        "Anime,portrait",
        "--nsfw",
    )
    assert r.code == 0, r.err
    entry = json.loads(cli("checkpoints", "show", "dream-shaper", "--json").out)
    assert (entry["display_name"], entry["description"], entry["tags"], entry["nsfw"]) == (
        "Dream Shaper",
        "soft light",
        ["anime", "portrait"],
        True,
    )
    assert entry["relative_path"] == "one.safetensors"  # the file is untouched
    assert json.loads(cli("checkpoints", "show", "dream-shaper", "--json").out)["sha256"] == entry["sha256"]
    cli("checkpoints", "edit", "dream-shaper", "--no-nsfw")
    assert json.loads(cli("checkpoints", "show", "dream-shaper", "--json").out)["nsfw"] is False
    taken = cli("checkpoints", "edit", "two", "--rename", "dream-shaper")
    assert taken.code == 1 and "already taken" in taken.err
    nothing = cli("checkpoints", "edit", "two")
    assert nothing.code == 1 and "nothing to change" in nothing.err
