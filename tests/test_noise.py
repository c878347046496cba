"""The starting noise as A1111 draws it (gpu_worker/philox.py, gpu_worker/noise.py): the sources
against an independent restatement and A1111's documented numbers, the variation seed and seed
resize against their formulas, and through the real worker, an A1111 infotext's noise kept."""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.jobs import Finished
from bot.generation.service import GenerationService
from bot.images.inputs import InputStore
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.rules.limits import Limits
from common.errors import EaselError
from common.worker_config import WorkerConfig
from gpu_worker.noise import first_draw, initial_noise, paste_centred, slerp
from gpu_worker.philox import PhiloxNormal
from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.conftest import run_bot_py

# A1111 modules/rng_philox.py's docstring: Generator(seed=0).randn(shape=(3, 4)), as CUDA's torch.randn.
A1111_SEED_0 = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]


def philox_by_hand(seed: int, offset: int, count: int) -> list[float]:
    """Philox-4x32-10 and Box–Muller one number at a time in plain Python integers: the test's own
    restatement of the algorithm, to hold the vectorised one to."""
    mask = 0xFFFFFFFF
    out = []
    for index in range(count):
        c = [offset, 0, index, 0]
        k = [seed & mask, (seed >> 32) & mask]
        for number in range(10):
            if number:
                k = [(k[0] + 0x9E3779B9) & mask, (k[1] + 0xBB67AE85) & mask]
            p0, p2 = c[0] * 0xD2511F53, c[2] * 0xCD9E8D57
            c = [(p2 >> 32) ^ c[1] ^ k[0], p2 & mask, (p0 >> 32) ^ c[3] ^ k[1], p0 & mask]
        inv = float(np.float32(2.3283064e-10))
        inv_2pi = float(np.float32(2.3283064e-10 * 6.2831855))
        u, v = c[0] * inv + inv / 2, c[1] * inv_2pi + inv_2pi / 2
        out.append(float(np.float32(math.sqrt(-2.0 * math.log(u)) * math.sin(v))))
    return out


@pytest.mark.parametrize("seed", [0, 1234, 2**32 + 7, 2**63 - 25])
def test_philox_equals_a_restatement_number_by_number_on_every_draw(seed: int) -> None:
    source = PhiloxNormal(seed)
    for offset in range(3):  # each draw moves the offset on
        assert source.randn((2, 5)).ravel().tolist() == philox_by_hand(seed, offset, 10)


def test_philox_gives_a1111s_documented_cuda_numbers() -> None:
    """Within 1e-6: CUDA's float32 log and sine round their last bits otherwise than numpy's
    float64 (A1111's own emulation gives these same numbers as ours)."""
    assert np.abs(PhiloxNormal(0).randn((3, 4)) - np.array(A1111_SEED_0)).max() < 1e-6


def test_each_source_per_picture_and_a_batch_as_its_single_pictures() -> None:
    shape = (4, 8, 8)
    batch, step = initial_noise("CPU", "cpu", shape, [7, 8, 9])
    steps = step.next(), step.next()
    for index, seed in enumerate((7, 8, 9)):
        generator = torch.Generator("cpu").manual_seed(seed)
        assert torch.equal(batch[index], torch.randn(shape, generator=generator))  # A1111's CPU source
        # the step noise goes on from the same generator, as A1111's sampler draws it (rng.next())
        for drawn in steps:
            assert torch.equal(drawn[index], torch.randn(shape, generator=generator))
        alone, _ = initial_noise("CPU", "cpu", shape, [seed])
        assert torch.equal(alone[0], batch[index])
    nv, nv_steps = initial_noise("NV", "cpu", shape, [7, 8])
    gpu_here, _ = initial_noise("GPU", "cpu", shape, [7, 8])  # no CUDA: computed as CUDA draws it
    assert torch.equal(nv, gpu_here) and torch.equal(nv[1], torch.from_numpy(PhiloxNormal(8).randn(shape)))
    assert not torch.equal(nv, batch[:2])
    # NV's step noise goes on with the Philox stream (A1111's NV generator's offset moves on by one a draw)
    philox = PhiloxNormal(8)
    philox.randn(shape)
    assert torch.equal(nv_steps.next()[1], torch.from_numpy(philox.randn(shape)))


def a1111_slerp(val: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The formula in numpy: norms and dot products along axis 1 of C x H x W."""
    low_n = low / np.linalg.norm(low, axis=1, keepdims=True)
    high_n = high / np.linalg.norm(high, axis=1, keepdims=True)
    dot = (low_n * high_n).sum(1)
    omega = np.arccos(dot)
    return (np.sin((1 - val) * omega) / np.sin(omega))[:, None, :] * low + (np.sin(val * omega) / np.sin(omega))[:, None, :] * high


def test_the_variation_seed_is_mixed_by_a1111s_slerp() -> None:
    low, high = first_draw("CPU", "cpu", 1, (4, 6, 5)), first_draw("CPU", "cpu", 2, (4, 6, 5))
    for strength in (0.1, 0.5, 0.9):
        expected = a1111_slerp(strength, low.double().numpy(), high.double().numpy())
        assert np.abs(slerp(strength, low, high).double().numpy() - expected).max() < 1e-5
    assert torch.equal(slerp(1.0, low, high), high) and torch.equal(slerp(0.0, low, high), low)
    # almost parallel: A1111's linear mix, its two weights the other way round
    near = low + 1e-4 * high
    assert torch.allclose(slerp(0.3, low, near), low * 0.3 + near * 0.7)
    mixed, _ = initial_noise("NV", "cpu", (4, 6, 5), [1], [2], 0.5)
    assert torch.equal(mixed[0], slerp(0.5, first_draw("NV", "cpu", 1, (4, 6, 5)), first_draw("NV", "cpu", 2, (4, 6, 5))))


def test_seed_resize_pastes_the_old_sizes_noise_centred() -> None:
    full = torch.zeros(1, 6, 8)
    small = torch.arange(12.0).view(1, 3, 4) + 1
    pasted = paste_centred(small, full)
    assert torch.equal(pasted[:, 1:4, 2:6], small) and pasted.sum() == small.sum()  # in the middle
    big = torch.arange(80.0).view(1, 8, 10)
    cropped = paste_centred(big, torch.zeros(1, 4, 6))
    assert torch.equal(cropped, big[:, 2:6, 2:8])  # its middle, cut to size
    # 64x96 drawn as at 64x64 (latents 8x8 into 12x8): the middle rows are the 8x8 draw of the seed
    noise, _ = initial_noise("CPU", "cpu", (4, 12, 8), [5], resize_from=(64, 64))
    assert torch.equal(noise[0][:, 2:10, :], first_draw("CPU", "cpu", 5, (4, 8, 8)))
    assert torch.equal(noise[0][:, :2, :], first_draw("CPU", "cpu", 5, (4, 12, 8))[:, :2, :])


def test_the_noise_command_prints_what_the_worker_draws(tmp_path: Path) -> None:
    done = run_bot_py("noise", "--seed", "0", "--shape", "1x3x4", "--rng", "nv", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert np.abs(np.array(printed["noise"][0][0]) - np.array(A1111_SEED_0)).max() < 1e-6
    refused = run_bot_py("noise", "--seed", "0", "--shape", "4x64", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: --shape")


# --- through the real worker ------------------------------------------------------------------------

HOST, HERE = Asker.host(), Place.command_line()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("noise")
    (root / "models").mkdir()
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", root / "models" / "tiny-sd1.safetensors")
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, root / "models")
    await registry.scan()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    yield Jobs(registry, service, None, inputs=InputStore(root / "data" / "inputs"))
    await service.close()
    await db.close()


async def picture(jobs: Jobs, plan=None, **options) -> tuple[np.ndarray, dict[str, str], bytes]:
    plan = plan or await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", steps=3, **options))
    [handle] = await jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    png = done.job.images[0].png
    image = Image.open(io.BytesIO(png))
    return np.asarray(image).astype(float), parse_infotext(image.info["parameters"])[2], png


@pytest.mark.asyncio(loop_scope="module")
async def test_an_a1111_pictures_noise_options_are_written_read_and_drawn_again(jobs: Jobs) -> None:
    asked = {"seed": 11, "rng": "nv", "subseed": 4, "subseed_strength": 0.3, "seed_resize_from": "96x64"}
    asked |= {"sampler": "DPM++ 2S a", "schedule": "align_your_steps", "ensd": 31337}
    made, params, png = await picture(jobs, **asked)
    assert (params["RNG"], params["Variation seed"], params["Variation seed strength"]) == ("NV", "4", "0.3")
    assert (params["Sampler"], params["Schedule type"], params["ENSD"]) == ("DPM++ 2S a", "Align Your Steps", "31337")
    assert (params["Seed resize from-1"], params["Seed resize from-2"]) == ("96", "64")  # A1111 reads WxH so
    key, _ = await jobs.read_parameters(png)
    again, _, _ = await picture(jobs, plan=await jobs.plan_from_infotext(HOST, HERE, await jobs.kept_parameters(key)))
    assert np.array_equal(again, made)  # the same parameters: the same picture, bit for bit
    plain, plain_params, _ = await picture(jobs, seed=11)
    assert not {"RNG", "Variation seed", "Variation seed strength", "Seed resize from-1"} & set(plain_params)
    assert not np.array_equal(plain, made)


@pytest.mark.asyncio(loop_scope="module")
async def test_sources_and_a_full_variation_through_the_worker(jobs: Jobs) -> None:
    gpu, params, _ = await picture(jobs, seed=3)  # the default: GPU, computed here as CUDA draws it
    nv, _, _ = await picture(jobs, seed=3, rng="NV")
    cpu, cpu_params, _ = await picture(jobs, seed=3, rng="CPU")
    assert np.array_equal(gpu, nv) and not np.array_equal(gpu, cpu)
    assert "RNG" not in params and cpu_params["RNG"] == "CPU"
    # at strength 1 the variation seed's noise is all there is: seed 3's picture becomes seed 9's
    nine, _, _ = await picture(jobs, seed=9)
    varied, _, _ = await picture(jobs, seed=3, subseed=9, subseed_strength=1.0)
    assert np.array_equal(varied, nine)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rng": "quantum"}, "RNG 'quantum' is not one of GPU, CPU, NV"),
        ({"subseed_strength": 1.5}, "variation seed strength must be between 0 and 1, not 1.5"),
        ({"subseed": -5, "subseed_strength": 0.5}, "variation seed must be -1 (random) or between"),
        ({"seed_resize_from": "big"}, "seed resize from 'big' is not WIDTHxHEIGHT"),
        ({"seed_resize_from": "100x64"}, "seed resize from 100x64 is not in multiples of 8"),
        ({"seed_resize_from": "99999x64"}, "seed resize from 99999x64 is outside 64-2048"),
    ],
)
async def test_bad_noise_options_are_refused_in_one_line(jobs: Jobs, options: dict, message: str) -> None:
    with pytest.raises(EaselError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await jobs.plan_imagine(HOST, HERE, ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", **options))


def test_ensd_reseeds_the_step_noise_after_the_first_draw() -> None:
    shape = (4, 8, 8)
    start, steps = initial_noise("CPU", "cpu", shape, [7, 8], ensd=31337)
    plain, _ = initial_noise("CPU", "cpu", shape, [7, 8])
    assert torch.equal(start, plain)  # the first draw is the seed's
    drawn = steps.next()
    for index, seed in enumerate((7, 8)):
        expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed + 31337))
        assert torch.equal(drawn[index], expected)
    # samplers diffusers runs take torch generators: the same reseeded ones
    _, nv_steps = initial_noise("NV", "cpu", shape, [7], ensd=5)
    assert torch.equal(torch.randn(shape, generator=nv_steps.torch_generators()[0]), torch.randn(shape, generator=torch.Generator().manual_seed(12)))


@pytest.mark.asyncio(loop_scope="module")
async def test_ensd_changes_an_ancestral_samplers_picture_only_and_is_written_then(jobs: Jobs) -> None:
    ancestral, _, _ = await picture(jobs, seed=5, sampler="Euler a", rng="CPU")
    reseeded, params, _ = await picture(jobs, seed=5, sampler="Euler a", rng="CPU", ensd=31337)
    assert params["ENSD"] == "31337" and not np.array_equal(ancestral, reseeded)
    plain, _, _ = await picture(jobs, seed=5, sampler="Euler", rng="CPU")
    ignored, euler_params, _ = await picture(jobs, seed=5, sampler="Euler", rng="CPU", ensd=31337)
    assert "ENSD" not in euler_params and np.array_equal(plain, ignored)  # no step noise: as A1111, none written


def red_square_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.asyncio(loop_scope="module")
async def test_from_a_picture_and_in_the_step_noise_the_source_and_variation_seed_hold_too(jobs: Jobs) -> None:
    """A1111 draws img2img's noise as the first draw of the pictures' generators (variation seed
    included) and the ancestral samplers' step noise from the same generators: NV and GPU (computed
    here) agree there too, and a full variation turns one seed's picture into the other's."""
    start = {"init_image": red_square_png(), "strength": 0.6, "sampler": "Euler a"}
    gpu, params, _ = await picture(jobs, seed=3, **start)
    nv, _, _ = await picture(jobs, seed=3, rng="NV", **start)
    cpu, _, _ = await picture(jobs, seed=3, rng="CPU", **start)
    assert np.array_equal(gpu, nv) and not np.array_equal(gpu, cpu) and params["Denoising strength"] == "0.6"
    nine, _, _ = await picture(jobs, seed=9, **start)
    varied, varied_params, _ = await picture(jobs, seed=3, subseed=9, subseed_strength=1.0, **start)
    # the first draw is seed 9's; the step noise stays seed 3's (as A1111's), so the pictures differ a little
    assert varied_params["Variation seed"] == "9" and not np.array_equal(varied, gpu)
    assert np.abs(varied - nine).mean() < np.abs(gpu - nine).mean()
    euler_nine, _, _ = await picture(jobs, seed=9, init_image=red_square_png(), strength=0.6, sampler="Euler")
    euler_varied, _, _ = await picture(jobs, seed=3, subseed=9, subseed_strength=1.0, init_image=red_square_png(), strength=0.6, sampler="Euler")
    assert np.array_equal(euler_varied, euler_nine)  # no step noise: the variation is the whole story
