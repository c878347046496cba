"""Upscaler models (ESRGAN family): what a file is, the registry, tiled passes, and the upscale command."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bot.checkpoints.registry import CheckpointRegistry
from bot.checkpoints.safetensors_header import read_header
from bot.db import open_database
from bot.images.infotext import read_picture, read_picture_parameters, render_reading
from bot.upscalers.registry import UpscalerRegistry
from bot.upscalers.service import UpscaleService, upscaled_size
from common.errors import EaselError
from common.pickle_reader import read_pickle_checkpoint
from common.upscaler_detection import UpscalerFileError, canonical_names, detect_upscaler
from gpu_worker.testing.tiny_upscalers import esrgan_names, make_tiny_upscaler, tiny_kind
from gpu_worker.upscale_models import enlarge, load_upscaler, planned_passes, upscale_picture

CPU = torch.device("cpu")
CASES = [  # layout, scale, file: the shapes people's files come in
    ("esrgan", 4, "4x-Tiny.pth"),
    ("esrgan", 2, "2x-Tiny.safetensors"),
    ("realesrgan", 4, "RealESRGAN_x4plus.pth"),
    ("realesrgan", 2, "RealESRGAN_x2plus.pth"),
    ("compact", 4, "realesr-general-x4v3.pth"),
]


def noise_picture(size: tuple[int, int] = (70, 50), seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def shapes_of(path: Path) -> dict[str, tuple[int, ...]]:
    reader = read_header(path) if path.suffix == ".safetensors" else read_pickle_checkpoint(path)
    return {name: tuple(t.shape) for name, t in reader.tensors.items()}


@pytest.fixture(scope="module")
def tiny_upscalers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("upscalers")
    for layout, scale, name in CASES:
        make_tiny_upscaler(folder / name, layout, scale, seed=1)
    return folder


@pytest.mark.parametrize(("layout", "scale", "name"), CASES)
def test_each_layout_is_recognised_from_its_tensors_and_runs_at_its_scale(
    tiny_upscalers: Path, layout: str, scale: int, name: str
) -> None:
    kind = detect_upscaler(shapes_of(tiny_upscalers / name))
    assert (kind.layout, kind.scale, kind.num_filters, kind.num_blocks) == (layout, scale, 8, 1)
    upscaler = load_upscaler(tiny_upscalers / name, CPU)
    out = enlarge(upscaler, noise_picture(), tile=0)
    assert out.size == (70 * scale, 50 * scale)
    assert np.asarray(out).std() > 3  # a picture, not a flat field: the weights were loaded


def test_the_original_esrgan_names_map_onto_real_esrgans() -> None:
    kind = tiny_kind("esrgan", 4)
    old = esrgan_names(kind)
    assert old["conv_first.weight"] == "model.0.weight" and old["conv_last.bias"] == "model.10.bias"
    assert old["body.0.rdb2.conv5.weight"] == "model.1.sub.0.RDB2.conv5.0.weight"
    assert old["conv_body.weight"] == "model.1.sub.1.weight" and old["conv_up2.weight"] == "model.6.weight"
    shapes = {name: (8, 8, 3, 3) for name in old.values()}
    back = canonical_names(shapes)
    assert {back[o]: o for o in old.values()} == {new: o for new, o in old.items()}


def test_a_tiled_pass_equals_a_whole_one_when_the_tiles_see_far_enough(tiny_upscalers: Path) -> None:
    for _, _, name in CASES:
        upscaler = load_upscaler(tiny_upscalers / name, CPU)
        picture = noise_picture((90, 61))
        whole = np.asarray(enlarge(upscaler, picture, tile=0)).astype(int)
        tiled = np.asarray(enlarge(upscaler, picture, tile=32, overlap=48)).astype(int)
        seams = np.asarray(enlarge(upscaler, picture, tile=32, overlap=8)).astype(int)
        assert np.abs(whole - tiled).max() <= 1, name  # rounding only
        assert np.abs(whole - seams).mean() < 2, name  # A1111's default overlap: close, not equal


def test_upscale_passes_until_big_enough_then_lanczos_meets_the_size(tiny_upscalers: Path) -> None:
    upscaler = load_upscaler(tiny_upscalers / "2x-Tiny.safetensors", CPU)
    assert planned_passes((70, 50), (400, 280), 2) == [(70, 50), (140, 100), (280, 200)]
    assert planned_passes((70, 50), (2000, 2000), 2) == [(70, 50), (140, 100), (280, 200)]  # three at most
    assert planned_passes((70, 50), (140, 100), 2) == [(70, 50)]
    progress: list[tuple[int, int]] = []
    out = upscale_picture(upscaler, noise_picture(), (200, 136), tile=64, progress=lambda *p: progress.append(p))
    assert out.size == (200, 136)
    assert progress[-1] == (progress[-1][1], 2 + 6) and len(progress) == 8  # 2 tiles, then 3 × 2


def test_what_is_not_an_esrgan_family_network_is_refused_with_a_reason() -> None:
    good = shapes_of_kind("esrgan", 4)
    for shapes, message in (
        ({"foo.weight": (3, 3)}, "not an ESRGAN-family upscaler"),
        (good | {"model.1.sub.0.RDB1.conv1x1.weight": (8, 8, 1, 1)}, "ESRGAN+"),
        ({k: v for k, v in good.items() if not k.startswith("model.6.")}, "without model.6.weight"),
        (good | {"model.0.weight": (4096, 3, 3, 3)}, "4096 filters"),
        ({k: v for k, v in shapes_of_kind("esrgan", 4, 3).items() if ".sub.1.RDB" not in k}, "gaps in its block"),
        ({"body.0.weight": (8, 3, 3, 3), "body.1.weight": (8,), "body.2.weight": (40, 8, 3, 3)}, "not a scale"),
    ):
        with pytest.raises(UpscalerFileError, match=message):
            detect_upscaler(shapes)


def shapes_of_kind(layout: str, scale: int, blocks: int = 1) -> dict[str, tuple[int, ...]]:
    from gpu_worker.upscaler_nets import build_network

    kind = tiny_kind(layout, scale, blocks=blocks)
    names = esrgan_names(kind)
    return {names[k]: tuple(v.shape) for k, v in build_network(kind).state_dict().items()}


async def test_the_registry_finds_upscalers_in_a1111s_and_comfyuis_folders(tmp_path: Path, tiny_upscalers: Path) -> None:
    from tests.hostile_files import UPSCALER_NUMBERS, hostile_checkpoints

    models = tmp_path / "models"
    for folder, name in (("ESRGAN", "4x-Tiny.pth"), ("RealESRGAN", "RealESRGAN_x4plus.pth")):
        (models / folder).mkdir(parents=True)
        shutil.copy(tiny_upscalers / name, models / folder / name)
    (models / "upscale_models").mkdir()
    shutil.copy(tiny_upscalers / "2x-Tiny.safetensors", models / "upscale_models" / "2x-Tiny.safetensors")
    hostile = hostile_checkpoints(tmp_path / "made")
    for name, (path, _) in hostile.items():
        shutil.copy(path, models / "ESRGAN" / (name.rsplit(".", 1)[0] + (".safetensors" if name.endswith("safetensors") else ".pth")))
    numbers = {name: (make(models / "ESRGAN" / name), reason) for name, (make, reason) in UPSCALER_NUMBERS.items()}
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        registry = UpscalerRegistry(db, models)
        report = await registry.scan()
        checkpoints = await CheckpointRegistry(db, models).scan()
        assert {e.name for e in report.added} == {"4x-Tiny", "RealESRGAN_x4plus", "2x-Tiny"}
        assert len(report.errors) == len(hostile) + len(numbers)  # every hostile file, refused by name, in one line
        assert all("\n" not in reason for _, reason in report.errors)
        refused = {Path(str(path)).name: reason for path, reason in report.errors}
        for name, (_, reason) in numbers.items():  # layer numbers in names bound nothing
            assert reason in refused[name], (name, refused[name])
        assert not checkpoints.added and not checkpoints.errors  # the checkpoint scan leaves these folders alone
        real = await registry.get("R-ESRGAN 4x+")  # A1111's name for the release, from its file name
        assert (real.name, real.alias, real.rank, real.format, real.label) == (
            "RealESRGAN_x4plus",
            "R-ESRGAN 4x+",
            4,
            "pickle",
            "Real-ESRGAN 4x (8nf, 1 blocks)",
        )
        assert await registry.choices(latent=False) == ["Lanczos", "Nearest", "2x-Tiny", "4x-Tiny", "R-ESRGAN 4x+"]
        use = await registry.resolve("4x-tiny")
        assert not isinstance(use, str) and (use.name, use.scale) == ("4x-Tiny", 4)
        assert await registry.resolve("latent (bicubic)") == "Latent (bicubic)"
        with pytest.raises(EaselError, match="enlarges a latent, inside the hires fix"):
            await registry.resolve("Latent", latent=False)
        with pytest.raises(EaselError, match="no upscaler named 'SwinIR 4x'; choose one of Latent"):
            await registry.resolve("SwinIR 4x")
    finally:
        await db.close()


async def test_an_upscale_keeps_the_pictures_parameters_and_adds_a1111s_postprocessing(
    tmp_path: Path, tiny_upscalers: Path
) -> None:
    models = tmp_path / "models"
    (models / "ESRGAN").mkdir(parents=True)
    shutil.copy(tiny_upscalers / "4x-Tiny.pth", models / "ESRGAN" / "4x-Tiny.pth")
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 96x64")
    buffer = io.BytesIO()
    noise_picture((96, 64)).save(buffer, format="PNG", pnginfo=info)
    original = buffer.getvalue()
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        registry = UpscalerRegistry(db, models)
        await registry.scan()
        service = UpscaleService(registry, max_pixels=300_000)
        read = read_picture(original)  # as Jobs.upscale reads an upload
        plain, original = read.upload, read.parameters
        for name, scale in (("4x-Tiny", 3.0), ("Lanczos", 2.5)):
            steps: list[tuple[int, int]] = []
            done = await service.upscale(plain, original, name, scale, lambda *p, s=steps: s.append(p))
            picture = Image.open(io.BytesIO(done.png))
            assert picture.size == (done.width, done.height) == upscaled_size(96, 64, scale) == (
                int(96 * scale) // 8 * 8,
                int(64 * scale) // 8 * 8,
            )
            assert picture.info["parameters"].startswith("a cat\n")
            assert picture.info["postprocessing"] == f"Postprocess upscale by: {scale:g}, Postprocess upscaler: {name}"
            assert bool(steps) == (name == "4x-Tiny")  # a model reports its tiles
            reading = read_picture_parameters(done.png)  # what /pnginfo and `pnginfo` show
            assert reading.prompt == "a cat" and render_reading(reading).endswith("\n\n" + done.postprocessing)
        for name, scale, message in (
            ("4x-Tiny", 1.0, "above 1 and at most 8"),
            ("4x-Tiny", 8.0, "would be 768x512, over the 0.3-megapixel limit"),
            ("Latent", 2.0, "inside the hires fix"),
            ("../4x-Tiny", 2.0, "no upscaler named"),
        ):
            with pytest.raises(EaselError, match=message):
                await service.upscale(plain, original, name, scale)
        # A file replaced by something else after registration is refused by the worker, in one line.
        (models / "ESRGAN" / "4x-Tiny.pth").write_bytes(b"not a pickle at all")
        with pytest.raises(EaselError) as refused:
            await service.upscale(plain, original, "4x-Tiny", 2.0)
        assert "\n" not in str(refused.value)
    finally:
        await db.close()


def test_the_cli_lists_and_upscales(cli, models: Path, tiny_upscalers: Path, tmp_path: Path) -> None:
    (models / "ESRGAN").mkdir()
    shutil.copy(tiny_upscalers / "RealESRGAN_x2plus.pth", models / "ESRGAN" / "RealESRGAN_x2plus.pth")
    scanned = cli("checkpoints", "scan")
    assert scanned.code == 0 and "RealESRGAN_x2plus" in scanned.out
    listed = cli("upscalers", "info", "R-ESRGAN 2x+")
    assert "one pass enlarges 2x" in listed.out
    noise_picture((40, 32)).save(tmp_path / "in.jpg", format="JPEG")
    done = cli("upscale", str(tmp_path / "in.jpg"), "--upscaler", "R-ESRGAN 2x+", "--scale", "2")
    assert done.code == 0, done.err
    assert Image.open(tmp_path / "in-2x.png").size == (80, 64)
    again = cli("upscale", str(tmp_path / "in.jpg"), "--upscaler", "R-ESRGAN 2x+", "--scale", "2")
    assert again.code == 1 and "exists" in again.err
    bad = cli("upscale", str(tmp_path / "in.jpg"), "--upscaler", "ESRGAN_4x", "--out", str(tmp_path / "x.png"))
    assert bad.code == 1 and "no upscaler named 'ESRGAN_4x'; choose one of Lanczos, Nearest, R-ESRGAN 2x+" in bad.err
    assert not (tmp_path / "x.png").exists()


@settings(max_examples=200, deadline=None)
@given(
    layout=st.sampled_from(["model.{}.weight", "model.1.sub.{}.RDB1.conv1.0.weight", "body.{}.weight", "body.{}.rdb1.conv1.weight"]),
    number=st.one_of(st.integers(0, 10**12), st.integers(10**12, 10**40), st.text("0123456789", min_size=1, max_size=6000)),
)
def test_any_layer_number_in_a_name_is_read_or_refused_at_once(layout: str, number: object) -> None:
    """However large the number an attacker writes into a tensor's name, detection builds nothing
    its size: it is refused (or, if small, read) in bounded time and memory."""
    compact = {"body.0.weight": (8, 3, 3, 3), "body.1.weight": (8,), "body.2.weight": (48, 8, 3, 3)}
    for start in (shapes_of_kind("esrgan", 4), shapes_of_kind("realesrgan", 4), compact):
        shapes = start | {layout.format(number): (8, 8, 3, 3)}
        try:
            detect_upscaler(shapes)
        except UpscalerFileError:
            pass
