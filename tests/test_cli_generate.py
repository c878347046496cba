"""`python bot.py generate` as a user runs it: a real process, a real worker, PNGs with infotext."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.conftest import run_bot_py


@pytest.mark.slow
def test_generate_writes_pngs_with_parameters(env: Path, tiny_dir: Path, cli) -> None:
    proc = run_bot_py(
        "generate",
        "--checkpoint",
        str(tiny_dir / "tiny-sdxl.safetensors"),
        "--prompt",
        "a red fox, forest",
        "--negative",
        "blurry",
        "--steps",
        "4",
        "--sampler",
        "Euler a",
        "--seed",
        "1234",
        "--size",
        "64x96",
        "--count",
        "2",
        "--out",
        "images",
        cwd=env,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted((env / "images").glob("*.png"))
    assert [f.name.split("-")[-1] for f in files] == ["1234.png", "1235.png"]
    image = Image.open(files[1])
    assert image.size == (64, 96)
    prompt, negative, params = parse_infotext(image.info["parameters"])
    assert (prompt, negative) == ("a red fox, forest", "blurry")
    assert params["Seed"] == "1235" and params["Sampler"] == "Euler a" and params["Steps"] == "4"
    assert "seeds 1234, 1235" in proc.stdout
    # The picture's own parameters made again (as /pnginfo's "Make this here"): the same picture.
    shutil.copy(tiny_dir / "tiny-sdxl.safetensors", env / "models" / "tiny-sdxl.safetensors")
    assert cli("checkpoints", "add", "tiny-sdxl.safetensors").code == 0  # in this process: `python bot.py` is the above
    again = cli("generate", "--from-picture", str(files[1]), "--out", "again")
    assert again.code == 0, again.err
    [remade] = (env / "again").glob("*.png")
    difference = np.abs(np.asarray(Image.open(remade), dtype=int) - np.asarray(image, dtype=int))
    assert difference.max() <= 2 and remade.name.endswith("-1235.png")  # made in a batch of two: to rounding


def test_bad_options_fail_fast_with_one_line(env: Path, tiny_dir: Path, cli) -> None:
    checkpoint = str(tiny_dir / "tiny-sd1.safetensors")
    cases = {
        ("--size", "100x64"): "width 100 is not a multiple of 8",
        ("--steps", "0"): "steps must be between 1 and 150",
        ("--sampler", "Warp 9"): "unknown sampler 'Warp 9'",
        ("--size", "huge"): "is not WIDTHxHEIGHT",
        ("--masked-content", "fill"): "masked content and inpaint area are for inpainting; give a mask too",
        ("--hires", "2", "--upscaler", "ESRGAN_4x"): "no upscaler named 'ESRGAN_4x'; choose one of Latent",
        ("--regions", "1,1"): "regions: separate the regions' prompts with ADDCOL or ADDROW (or BREAK)",
        ("--regions", "1;x"): "regions: '1;x' is not understood",
    }
    for extra, message in cases.items():  # in this process: `python bot.py` less its interpreter start
        done = cli("generate", "--checkpoint", checkpoint, "--prompt", "x", "--out", "o", *extra)
        assert done.code == 1
        assert done.err.strip().splitlines() == [f"error: {message}"] or message in done.err, done.err
        assert len(done.err.strip().splitlines()) == 1
        assert "starting the worker" not in done.out  # refused before any worker starts
    assert not (env / "o").exists()
    # and once as a process of its own, as a person runs it
    proc = run_bot_py(
        "generate", "--checkpoint", "no-such-model", "--prompt", "x", "--out", "o", cwd=env, env={**os.environ}
    )
    assert proc.returncode == 1 and "no checkpoint named 'no-such-model'" in proc.stderr


def test_worker_runs_on_its_own_for_debugging(tmp_path: Path, tiny_dir: Path, capsys) -> None:
    from gpu_worker.__main__ import main

    out = tmp_path / "debug.png"
    assert (
        main(
            [
                "generate",
                str(tiny_dir / "tiny-sd1.safetensors"),
                "--prompt",
                "a cat",
                "--config",
                "tiny-sd1",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "BatchProgress" in printed and "JobDone" in printed
    assert parse_infotext(Image.open(out).info["parameters"])[0] == "a cat"
    assert main(["generate", str(tiny_dir / "missing.safetensors"), "--prompt", "x"]) == 1


@pytest.mark.slow
def test_precision_reaches_the_model(env: Path, tiny_dir: Path, cli, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """EASEL_PRECISION=bf16 (the bot's setting too) and `--precision full` draw the same picture to
    within bf16's rounding, and not bit for bit: each ran in the precision it asked for."""
    common = ["generate", "--checkpoint", str(tiny_dir / "tiny-sd1.safetensors"), "--prompt", "a red fox"]
    common += ["--steps", "3", "--seed", "7", "--size", "64x64"]
    monkeypatch.setenv("EASEL_PRECISION", "bf16")
    half = cli(*common, "--out", "bf16")
    assert half.code == 0, half.err
    full = cli(*common, "--precision", "full", "--out", "full")
    assert full.code == 0, full.err
    [a], [b] = (list((env / folder).glob("*.png")) for folder in ("bf16", "full"))
    difference = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
    assert 0 < difference.mean() < 20  # bf16 keeps 8 bits of mantissa: close, never identical
    with pytest.raises(SystemExit):
        cli(*common, "--precision", "quarter", "--out", "x")
    assert "invalid choice: 'quarter'" in capsys.readouterr().err
