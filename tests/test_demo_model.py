"""The shipped demo model draws what it is asked, through the real registry, rules and worker.

Nothing is trained here: the tests load bot/demo's weights and judge its pictures by pixel counting
(bot/demo/world.py), on colour pairs its training never showed (listed in the file's metadata).
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.demo import DEMO_FILE, DEMO_NOTE, install_demo
from bot.demo.world import COLOURS, caption, colour_names, colour_pairs, dominant_colours, draw, sample
from bot.generation.jobs import Finished
from bot.generation.service import GenerationService
from bot.images.inputs import InputStore
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.networks.registry import LoraRegistry
from bot.rules.limits import Limits
from common.worker_config import WorkerConfig

aio = pytest.mark.asyncio(loop_scope="module")  # the async tests share the module's worker
HOST, HERE = Asker.host(), Place.command_line()


def held_out_pairs() -> list[tuple[str, str]]:
    recipe = json.loads(inspect_file(DEMO_FILE).metadata["other"]["easel.training"])
    held = [tuple(pair) for pair in recipe["held_out_colour_pairs"]]
    assert held == colour_pairs(recipe["seed"])[1] and len(held) == 11  # the file says what it never saw
    return held


@dataclass
class Made:
    picture: Image.Image
    notes: tuple[str, ...]

    @property
    def colours(self) -> tuple[str, str]:
        return dominant_colours(self.picture)


@dataclass
class World:
    jobs: Jobs

    async def imagine(self, prompt: str, seed: int, **options: object) -> Made:
        plan = await self.jobs.plan_imagine(
            HOST, HERE, ImagineOptions.of(prompt=prompt, checkpoint="easel-demo", seed=seed, **options)
        )
        [handle] = await self.jobs.start(plan)
        done = [event async for event in handle.events()][-1]
        assert isinstance(done, Finished), done
        return Made(Image.open(io.BytesIO(done.job.images[0].png)).convert("RGB"), done.job.spec.notes)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("demo")
    install_demo(root / "models")
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, root / "models")
    await registry.scan()
    loras = LoraRegistry(db, root / "models")
    await loras.scan()
    # No previews: nobody sees them here, and each costs a VAE decode and a picture check per image.
    service = GenerationService(
        db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=50), preview_every=0
    )
    await service.start()
    yield World(Jobs(registry, service, None, loras, inputs=InputStore(root / "data" / "inputs")))
    await service.close()
    await db.close()


def shape_centre(picture: Image.Image) -> tuple[float, float]:
    """Where the shape is: the mean position of the clear pixels that are not the background's colour."""
    _, background = dominant_colours(picture)
    names, distances = colour_names(np.asarray(picture))
    ys, xs = np.nonzero((names != list(COLOURS).index(background)) & (distances < 70))
    return float(xs.mean()) / picture.width, float(ys.mean()) / picture.height


async def held_out_score(world: World, **options: object) -> dict[str, int]:
    """Of 24 held-out prompts (every caption form), how many get the shape's and the background's colour right."""
    held = held_out_pairs()
    rng = random.Random(7)
    specs = [sample(rng, held) for _ in range(24)]
    # Queued together, as people's jobs are: the service draws them four to a pipeline call.
    made = await asyncio.gather(
        *(world.imagine(caption(*spec, form=i % 4), seed=i, **options) for i, spec in enumerate(specs))
    )
    right = {"shape": 0, "background": 0}
    for spec, picture in zip(specs, made, strict=True):
        shape, background = picture.colours
        right["shape"] += shape == spec[1]
        right["background"] += background == spec[2]
    return right


@aio
@pytest.mark.slow
async def test_it_draws_the_colours_asked_for_pairs_it_never_saw(world: World) -> None:
    """The issue's bar: shape and background colour right for >= 90 % of held-out prompts, with the
    bot's defaults (DPM++ 2M Karras, 20 steps, CFG 7, no negative prompt); and CFG matters: without
    guidance (CFG 1) more colours go astray. On 96 other held-out prompts (`python
    bench/demo_guidance.py`, bench/results/demo_guidance-2026-12-07.json) guidance gets 95.8 % of
    shapes and 100 % of backgrounds right, none 85.4 % and 93.8 %: about 4 colours more in 48, so 24
    prompts show the gap but not its size; the check asks for a gap, not a margin."""
    guided = await held_out_score(world)
    assert guided["shape"] >= 22 and guided["background"] >= 22, guided
    unguided = await held_out_score(world, cfg=1)
    assert unguided["shape"] + unguided["background"] < guided["shape"] + guided["background"], (guided, unguided)


@aio
@pytest.mark.slow
async def test_the_negative_prompt_keeps_out_what_it_names(world: World) -> None:
    prompt = "a circle on a blue background"  # no colour for the circle: the model picks one
    free = [made.colours[0] for made in await asyncio.gather(*(world.imagine(prompt, seed=s) for s in range(8)))]
    assert sum(colour in ("yellow", "orange") for colour in free) >= 6, free
    negative = "a yellow circle, an orange circle"
    kept_out = [
        made.colours[0]
        for made in await asyncio.gather(*(world.imagine(prompt, seed=s, negative=negative) for s in range(8)))
    ]
    assert not {"yellow", "orange"} & set(kept_out), kept_out


@aio
async def test_a_seed_makes_one_picture(world: World) -> None:
    a = await world.imagine("a green circle on a white background, top right", seed=11)
    b = await world.imagine("a green circle on a white background, top right", seed=11)
    c = await world.imagine("a green circle on a white background, top right", seed=12)
    assert a.picture.tobytes() == b.picture.tobytes() != c.picture.tobytes()
    assert DEMO_NOTE in a.notes  # every picture says what the demo model is and how to go further


@aio
async def test_img2img_keeps_the_layout_and_takes_the_new_colour(world: World) -> None:
    source = io.BytesIO()
    draw("circle", "red", "blue", "top left", "large").save(source, format="PNG")
    made = await world.imagine(
        "a yellow circle on a blue background", seed=3, init_image=source.getvalue(), strength=0.6
    )
    assert made.colours == ("yellow", "blue")
    x, y = shape_centre(made.picture)
    assert x < 0.45 and y < 0.45, (x, y)  # still top left, though the prompt names no place


@aio
async def test_the_hires_fix_keeps_the_composition(world: World) -> None:
    prompt = "a large white diamond on a red background, bottom right"
    small = await world.imagine(prompt, seed=5)
    large = await world.imagine(prompt, seed=5, hires_scale=2, hires_upscaler="Lanczos", hires_denoise=0.4)
    assert large.picture.size == (128, 128) and large.colours == small.colours == ("white", "red")
    (x1, y1), (x2, y2) = shape_centre(small.picture), shape_centre(large.picture)
    assert abs(x1 - x2) < 0.1 and abs(y1 - y2) < 0.1


@aio
@pytest.mark.slow
async def test_its_lora_changes_what_it_draws(world: World) -> None:
    """The shipped LoRA ("paper") puts shapes on a white background, as far as its strength says,
    and leaves their colour alone (measured: 10 of 12 white at strength 1, none at 0)."""
    rng = random.Random(3)
    specs = [sample(rng, [p for p in colour_pairs(0)[0] if "white" not in p]) for _ in range(8)]
    counts = {}
    for strength in (0, 0.1, 1):
        tag = f" <lora:easel-demo-paper:{strength}>" if strength else ""
        asked = (world.imagine(caption(*spec, form=1) + tag, seed=i) for i, spec in enumerate(specs))
        made = [picture.colours for picture in await asyncio.gather(*asked)]
        counts[strength] = sum(background == "white" for _, background in made)
        assert sum(shape == spec[1] for (shape, _), spec in zip(made, specs, strict=True)) >= 7
    assert counts[0] == 0 and counts[0.1] <= 1 and counts[1] >= 6, counts


def test_the_cli_reaches_it_as_demo_with_no_set_up(cli, tmp_path: Path) -> None:
    result = cli(
        "generate", "--checkpoint", "demo", "--prompt", "a blue triangle on an orange background", "--seed", "1",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "easel-demo" in result.out and "draws only coloured shapes" in result.out
    [png] = (tmp_path / "out").glob("*.png")
    assert dominant_colours(Image.open(png)) == ("blue", "orange")


def test_the_shipped_file_says_what_it_is() -> None:
    inspection = inspect_file(DEMO_FILE)
    spec = inspection.metadata["modelspec"]
    assert inspection.pipeline_config == "demo-sd1" and inspection.architecture.label == "SD1.x"
    assert spec["title"] == "Easel demo: shapes and colours" and "tools/train_demo_model.py" in spec["description"]
    recipe = json.loads(inspection.metadata["other"]["easel.training"])
    assert {"seed", "vae_steps", "steps", "seconds", "held_out_colour_pairs", "score"} <= set(recipe)
    assert DEMO_FILE.stat().st_size < 20e6  # fp16, small enough to ship in the repository


def commonest_colour(picture: Image.Image, box: tuple[int, int, int, int]) -> str:
    """The named colour most pixels of `box` are nearest to."""
    names, _ = colour_names(np.asarray(picture.crop(box)).reshape(-1, 3))
    return list(COLOURS)[int(np.bincount(names, minlength=len(COLOURS)).argmax())]


@aio
async def test_regions_put_each_prompt_where_its_region_is(world: World) -> None:
    """The Regional Prompter's Attention mode: each half of the picture gets the background its region's
    prompt asks for, and swapping the prompts swaps the halves; rows too. The model only ever saw one
    background per picture. (Not the hires fix: at twice its size the demo model draws noise, regions or
    not; nor ADDCOMM, whose ", " the model never read: tests/test_regions.py covers both.)"""
    blue, green = "a small red circle on a blue background", "a small white square on a green background"
    left, right, top, bottom = (0, 0, 32, 64), (32, 0, 64, 64), (0, 0, 64, 32), (0, 32, 64, 64)
    cases = [
        (f"{blue} ADDCOL {green}", {}, (left, "blue"), (right, "green")),
        (f"{green} ADDCOL {blue}", {}, (left, "green"), (right, "blue")),
        (f"{green} ADDROW {blue}", {"regions": "1,1 rows"}, (top, "green"), (bottom, "blue")),
        (f"{green} BREAK {blue}", {"regions": "1,1"}, (left, "green"), (right, "blue")),  # BREAK read as ADDCOL
    ]
    made = await asyncio.gather(
        *(world.imagine(prompt, seed, steps=12, **options) for prompt, options, _, _ in cases for seed in (1, 2))
    )
    for number, ((prompt, _, (box_a, colour_a), (box_b, colour_b)), picture) in enumerate(zip([c for c in cases for _ in (1, 2)], made, strict=True)):
        found = (commonest_colour(picture.picture, box_a), commonest_colour(picture.picture, box_b))
        assert found == (colour_a, colour_b), (number, prompt, found)


@aio
async def test_one_region_over_the_whole_picture_is_the_plain_prompts_picture(world: World) -> None:
    """The regional path adds nothing of its own: a divide ratio of one number is one region, and its
    picture is the plain prompt's, to the bit."""
    prompt = "a small red circle on a blue background BREAK top left"
    plain, regional = await asyncio.gather(world.imagine(prompt, 5, steps=8), world.imagine(prompt, 5, steps=8, regions="1"))
    assert np.array_equal(np.asarray(plain.picture), np.asarray(regional.picture))
