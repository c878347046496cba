"""img2img through the real worker: the input picture, its strength, its size, and its reruns."""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image, ImageDraw

from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.jobs import Finished
from bot.generation.service import GenerationService
from bot.images.inputs import InputStore
from bot.images.uploads import read_upload
from bot.jobs import Asker, ImagineOptions, Jobs, Place, same_seed
from bot.rules.limits import Limits
from bot.upscalers.registry import UpscalerRegistry
from bot.upscalers.service import UpscaleService
from common.errors import EaselError
from common.worker_config import WorkerConfig
from gpu_worker.testing.tiny import make_tiny_checkpoint
from gpu_worker.testing.tiny_upscalers import make_tiny_upscaler
from tests.a1111_infotext import parse_generation_parameters as parse_infotext

pytestmark = pytest.mark.asyncio(loop_scope="module")
HOST, HERE = Asker.host(), Place.command_line()


def picture_bytes(colour: tuple[int, int, int], shape: str, size: tuple[int, int] = (64, 64)) -> bytes:
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((10, 10, size[0] - 10, size[1] - 10), fill=(20, 20, 220))
    else:
        draw.rectangle((5, size[1] // 2, size[0] - 5, size[1] - 5), fill=(250, 250, 250))
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()


RED_CIRCLE = picture_bytes((220, 30, 30), "circle")
GREEN_BAR = picture_bytes((30, 200, 60), "bar")


@dataclass
class World:
    jobs: Jobs
    inputs: InputStore


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("img2img")
    (root / "models").mkdir()
    for arch in ("sd1", "sdxl"):
        shutil.copy(tiny_dir / f"tiny-{arch}.safetensors", root / "models" / f"tiny-{arch}.safetensors")
    make_tiny_upscaler(root / "models" / "ESRGAN" / "2x-Tiny.pth", "esrgan", 2)
    make_tiny_checkpoint("sd1", root / "models" / "tiny-sd1-inpainting.safetensors", seed=4, inpainting=True)
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, root / "models")
    await registry.scan()
    upscalers = UpscalerRegistry(db, root / "models")
    await upscalers.scan()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    inputs = InputStore(root / "data" / "inputs")
    yield World(Jobs(registry, service, None, inputs=inputs, upscaling=UpscaleService(upscalers)), inputs)
    await service.close()
    await db.close()


async def run(w: World, plan) -> tuple[np.ndarray, dict[str, str], str]:
    [handle] = await w.jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image).astype(float), parse_infotext(image.info["parameters"])[2], done.job.id


async def img2img(w: World, init: bytes, strength: float, checkpoint: str = "tiny-sd1", **more):
    options = ImagineOptions.of(
        prompt="a fox", checkpoint=checkpoint, steps=10, seed=3, init_image=init, strength=strength, **more
    )
    return await run(w, await w.jobs.plan_imagine(HOST, HERE, options))


async def test_the_lower_the_strength_the_more_the_picture_follows_its_input(world: World) -> None:
    # Random tiny models cannot reproduce a picture, but how much the output depends on its input can
    # be measured: two different inputs, the same seed, at each strength.
    gaps = {}
    for strength in (0.1, 0.9):
        a, params, _ = await img2img(world, RED_CIRCLE, strength)
        b, _, _ = await img2img(world, GREEN_BAR, strength)
        gaps[strength] = np.abs(a - b).mean()
        assert params["Denoising strength"] == f"{strength}" and params["Steps"] == "10"
    assert gaps[0.1] > 5 * gaps[0.9] > 0


async def test_the_size_follows_the_pictures_shape_and_reruns_start_from_it_again(world: World) -> None:
    wide = picture_bytes((220, 30, 30), "circle", size=(300, 200))
    first, params, job_id = await img2img(world, wide, 0.6)
    assert first.shape[:2] == (64, 96) and (params["Size-1"], params["Size-2"]) == ("96", "64")  # 3:2, ~64² area
    again, _, _ = await run(world, await world.jobs.plan_rerun(HOST, HERE, job_id, seed=same_seed))
    assert np.array_equal(first, again)  # the kept input, the same seed: the same picture
    xl, params, _ = await img2img(world, wide, 0.6, checkpoint="tiny-sdxl", size=(64, 64), resize_mode="fill")
    assert xl.shape[:2] == (64, 64) and params["Denoising strength"] == "0.6"


async def test_bad_pictures_and_settings_are_refused_before_queueing(world: World) -> None:
    with pytest.raises(EaselError, match="not a PNG, JPEG or WebP"):
        await img2img(world, b"<svg onload=alert(1)>", 0.5)
    refused_picture = picture_bytes((1, 2, 3), "bar")
    with pytest.raises(EaselError, match="10 steps redraw nothing"):
        await img2img(world, refused_picture, 0.05)
    assert not (world.inputs.folder / f"{read_upload(refused_picture).sha256}.png").exists()  # nothing kept
    with pytest.raises(EaselError, match="resize mode 'zoom' is not one of resize, crop, fill"):
        await img2img(world, RED_CIRCLE, 0.5, resize_mode="zoom")
    _, _, job_id = await img2img(world, RED_CIRCLE, 0.5)
    for kept in world.inputs.folder.iterdir():
        kept.unlink()
    with pytest.raises(EaselError, match="no longer kept"):
        await world.jobs.plan_rerun(HOST, HERE, job_id)


# --- the hires fix ------------------------------------------------------------------------------


async def test_hires_fix_doubles_the_size_in_two_passes_and_says_so_as_a1111_does(world: World) -> None:
    from bot.generation.jobs import Progress

    for upscaler in ("Latent", "Lanczos", "2x-Tiny"):
        options = ImagineOptions.of(
            prompt="a lighthouse",
            checkpoint="tiny-sd1",
            steps=4,
            seed=8,
            hires_scale=2,
            hires_upscaler=upscaler.upper(),
        )
        [handle] = await world.jobs.start(await world.jobs.plan_imagine(HOST, HERE, options))
        events = [event async for event in handle.events()]
        done = events[-1]
        assert isinstance(done, Finished)
        image = Image.open(io.BytesIO(done.job.images[0].png))
        params = parse_infotext(image.info["parameters"])[2]
        assert image.size == (128, 128) and (params["Size-1"], params["Size-2"]) == ("64", "64")
        assert (params["Hires upscale"], params["Hires upscaler"], params["Denoising strength"]) == (
            "2",
            upscaler,
            "0.7",
        )
        steps = [(e.step, e.total) for e in events if isinstance(e, Progress)]
        assert steps[-1] == (8, 8)  # 4 steps, then pass two's 4 (A1111 runs them as asked), counted as one job


async def test_hires_settings_out_of_bounds_are_refused(world: World) -> None:
    for values, message in (
        ({"hires_scale": 5}, "hires upscale must be above 1 and at most 4"),
        ({"hires_scale": 2, "hires_upscaler": "ESRGAN 4x"}, "no upscaler named 'ESRGAN 4x'; choose one of Latent"),
        ({"hires_scale": 2, "hires_denoise": 0.01}, "second pass would run no step"),
        ({"hires_scale": 4, "size": (1024, 1024)}, "would make 4096x4096"),
        ({"hires_scale": 2, "init_image": RED_CIRCLE}, "the hires fix is for pictures made from text"),
    ):
        options = ImagineOptions.of(prompt="a lighthouse", checkpoint="tiny-sd1", steps=4, **values)
        with pytest.raises(EaselError, match=message):
            await world.jobs.plan_imagine(HOST, HERE, options)


# --- pictures' parameters: /pnginfo and "Make this here" -------------------------------------------


async def test_a_pictures_parameters_are_read_and_made_again_here(world: World) -> None:
    from bot.jobs import MissingCheckpoint

    options = ImagineOptions.of(
        prompt="a lighthouse, (storm:1.2)", negative="blurry", checkpoint="tiny-sd1", steps=4, seed=21
    )
    made, _, _ = await run(world, await world.jobs.plan_imagine(HOST, HERE, options))
    png = io.BytesIO()
    Image.fromarray(made.astype("uint8")).save(png, format="PNG")  # pixels only: no parameters
    with pytest.raises(EaselError, match="carries no generation parameters"):
        await world.jobs.read_parameters(png.getvalue())
    [handle] = await world.jobs.start(await world.jobs.plan_imagine(HOST, HERE, options))
    original = [e async for e in handle.events()][-1].job.images[0].png
    key, info = await world.jobs.read_parameters(original)
    assert (info.prompt, info.negative, info.params["Seed"]) == ("a lighthouse, (storm:1.2)", "blurry", "21")
    again, _, _ = await run(
        world, await world.jobs.plan_from_infotext(HOST, HERE, await world.jobs.kept_parameters(key))
    )
    assert np.array_equal(again, made)  # the same parameters, the same checkpoint: the same picture
    # The same picture as a JPEG with A1111's EXIF UserComment (piexif's "UNICODE" + UTF-16).
    image = Image.open(io.BytesIO(original))
    exif = image.getexif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + image.info["parameters"].encode("utf-16-be")
    jpeg = io.BytesIO()
    image.convert("RGB").save(jpeg, format="JPEG", exif=exif.tobytes())
    assert (await world.jobs.read_parameters(jpeg.getvalue()))[1].params == info.params
    info.params["Model hash"], info.params["Model"] = "0123456789", "elsewhere"
    with pytest.raises(MissingCheckpoint, match=r"made with elsewhere \[0123456789\], which is not installed here"):
        await world.jobs.plan_from_infotext(HOST, HERE, info)
    info.params["Steps"] = "many"
    info.params["Model"] = "tiny-sd1"
    with pytest.raises(EaselError, match="the picture's Steps 'many' is not a number"):
        await world.jobs.plan_from_infotext(HOST, HERE, info)


# --- inpainting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["tiny-sd1", "tiny-sd1-inpainting"])
async def test_inpainting_redraws_only_inside_the_mask(world: World, checkpoint: str) -> None:
    """On a normal checkpoint as A1111 does it there, and on an inpainting one (a 9-channel UNet)."""
    from gpu_worker.init_images import prepare_init, prepare_mask

    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    mask_png = io.BytesIO()
    mask.save(mask_png, format="PNG")
    options = ImagineOptions.of(
        prompt="a fox", checkpoint=checkpoint, steps=10, seed=3, init_image=RED_CIRCLE, strength=0.9,
        mask=mask_png.getvalue(), mask_blur=2,
    )  # fmt: skip
    out, params, _ = await run(world, await world.jobs.plan_imagine(HOST, HERE, options))
    assert params["Mask blur"] == "2" and params["Denoising strength"] == "0.9"
    kept = await world.inputs.get(read_upload(RED_CIRCLE).sha256)  # kept once the job started
    init = np.asarray(prepare_init(kept, 64, 64, "crop")).astype(float)
    blurred = np.asarray(prepare_mask(mask_png.getvalue(), 64, 64, "crop", 2))
    outside, inside = blurred == 0, blurred == 255
    assert np.array_equal(out[outside], init[outside])  # A1111's overlay: untouched outside the mask
    assert np.abs(out[inside] - init[inside]).mean() > 5  # and redrawn inside it
    with pytest.raises(EaselError, match="give the picture too"):
        await world.jobs.plan_imagine(
            HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", mask=mask_png.getvalue())
        )


async def test_an_inpainting_checkpoint_makes_pictures_from_text_from_pictures_and_with_hires(world: World) -> None:
    """A 9-channel checkpoint runs every kind of job, as A1111 runs one: from text (a grey picture
    under a full mask), from a picture (the strength still tells how much is kept), and the hires fix."""
    record = await world.jobs.registry.get("tiny-sd1-inpainting")
    assert record.runnable and record.pipeline_config == "tiny-sd1+inpainting"
    text, params, _ = await run(
        world, await world.jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint=record.name, steps=4))
    )
    assert text.shape == (64, 64, 3) and params["Model"] == "tiny-sd1-inpainting"
    # Two inputs, the same seed: at a low strength their pictures differ as the inputs do (measured
    # between the two, as the tiny VAE's round trip is far from any input).
    gaps = {}
    for strength in (0.1, 0.9):
        a = (await img2img(world, RED_CIRCLE, strength, checkpoint=record.name))[0]
        b = (await img2img(world, GREEN_BAR, strength, checkpoint=record.name))[0]
        gaps[strength] = np.abs(a - b).mean()
    assert gaps[0.1] > 5 * gaps[0.9] > 0
    options = ImagineOptions.of(prompt="a fox", checkpoint=record.name, steps=4, hires_scale=2)
    big, params, _ = await run(world, await world.jobs.plan_imagine(HOST, HERE, options))
    assert big.shape == (128, 128, 3) and params["Hires upscaler"] == "Latent"


def square_mask() -> bytes:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((36, 36, 55, 55), fill=255)
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("options", "written"),
    [
        ({"masked_content": "fill"}, {"Masked content": "fill"}),
        ({"masked_content": "latent noise"}, {"Masked content": "latent noise"}),
        (
            {"masked_content": "latent nothing", "only_masked": True, "mask_padding": 8},
            {"Masked content": "latent nothing", "Inpaint area": "Only masked", "Masked area padding": "8"},
        ),
        ({"only_masked": True}, {"Inpaint area": "Only masked", "Masked area padding": "32"}),
    ],
)
async def test_masked_content_and_inpaint_area_change_only_the_masked_part_and_are_written(
    world: World, options: dict, written: dict[str, str]
) -> None:
    base = {"prompt": "a fox", "checkpoint": "tiny-sd1", "steps": 6, "seed": 5, "init_image": RED_CIRCLE}
    base |= {"strength": 0.5, "mask": square_mask(), "mask_blur": 0}
    plain, plain_params, _ = await run(world, await world.jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**base)))
    out, params, job_id = await run(world, await world.jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**base, **options)))
    assert {key: params.get(key) for key in written} == written
    assert not {"Masked content", "Inpaint area"} & set(plain_params)  # A1111's defaults are not written
    outside = np.ones((64, 64), bool)
    outside[36:56, 36:56] = False
    init = np.asarray(Image.open(io.BytesIO(read_upload(RED_CIRCLE).png))).astype(float)
    assert np.array_equal(out[outside], init[outside]) and np.array_equal(plain[outside], init[outside])
    assert np.abs(out[~outside] - plain[~outside]).mean() > 1  # the option changed what was drawn
    again, again_params, _ = await run(world, await world.jobs.plan_rerun(HOST, HERE, job_id, seed=same_seed))
    assert again_params == params and np.array_equal(again, out)  # Reroll keeps them


async def test_inpainting_options_without_a_mask_or_out_of_bounds_are_refused(world: World) -> None:
    base = {"prompt": "a fox", "checkpoint": "tiny-sd1", "steps": 6, "init_image": RED_CIRCLE}
    for values, message in (
        ({"masked_content": "fill"}, "for inpainting; give a mask too"),
        ({"only_masked": True}, "for inpainting; give a mask too"),
        ({"mask": square_mask(), "masked_content": "noise"}, "masked content 'noise' is not one of fill, original"),
        ({"mask": square_mask(), "only_masked": True, "mask_padding": 999}, "padding must be 0 to 256"),
    ):
        with pytest.raises(EaselError, match=message):
            await world.jobs.plan_imagine(HOST, HERE, ImagineOptions.of(**base, **values))


async def test_upscale_of_a_picture_made_from_a_picture_redraws_it_at_twice_its_size(world: World) -> None:
    first, params, job_id = await img2img(world, RED_CIRCLE, 0.6)
    posted = io.BytesIO()
    Image.fromarray(first.astype(np.uint8)).save(posted, format="PNG")
    plan = await world.jobs.plan_rerun(HOST, HERE, job_id, seed=same_seed, hires_scale=2, init_image=posted.getvalue())
    big, big_params, _ = await run(world, plan)
    assert big.shape == (128, 128, 3) and big_params["Denoising strength"] == "0.35"
    assert big_params["Seed"] == params["Seed"]  # the same seed, from the posted picture
    shrunk = np.asarray(Image.fromarray(big.astype(np.uint8)).resize((64, 64), Image.Resampling.LANCZOS)).astype(float)
    assert np.abs(shrunk - first).mean() < np.abs(shrunk - np.asarray(Image.new("RGB", (64, 64)))).mean()
    with pytest.raises(EaselError, match="no picture left to upscale"):
        await world.jobs.plan_rerun(HOST, HERE, job_id, seed=same_seed, hires_scale=2)
    huge = io.BytesIO()
    Image.new("RGB", (1536, 1024)).save(huge, format="PNG")
    with pytest.raises(EaselError, match="would be 3072x2048, over this bot's size limit; /upscale"):
        await world.jobs.plan_rerun(HOST, HERE, job_id, hires_scale=2, init_image=huge.getvalue())
