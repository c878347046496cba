"""Editing a picture by instruction (FLUX.1 Kontext): what marks an edit model, where its pictures'
tokens go, the worker reading the pictures and the instruction, and every rule of an edit through the
real service and worker — before anything is queued when it is refused."""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from bot.checkpoints.registry import CheckpointRegistry
from bot.generation.jobs import Finished
from bot.images.infotext import parse_infotext
from bot.jobs import Asker, Jobs, Place, same_seed
from common.editing import INFOTEXT_KEY, read_hashes
from common.errors import EaselError
from common.protocol import BatchProgress, ComponentUse, JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.families.flux_kontext import KontextPipeline, placements, reference_size
from gpu_worker.testing.tiny_flux import PART_FILES, make_tiny_flux, make_tiny_flux_parts
from tests.a1111_infotext import parse_generation_parameters
from tests.helpers import jobs_over

HOST, HERE = Asker.host(), Place.command_line()


def png(colour: tuple[int, int, int] | str, size: tuple[int, int] = (96, 64)) -> bytes:
    """A picture with a bright square in it, so that each colour's latents differ everywhere."""
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def kontext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder as a ComfyUI user has it for FLUX.1 Kontext: BFL's transformer-only files
    (Kontext, and dev beside it) and their parts in models/text_encoders and models/VAE."""
    models = tmp_path_factory.mktemp("kontext") / "models"
    models.mkdir()
    make_tiny_flux(models / "flux1-kontext-dev.safetensors", shape="transformer")  # dev's metadata: the name decides
    make_tiny_flux(models / "flux1-dev.safetensors", shape="transformer")
    make_tiny_flux_parts(models)
    return models


def test_kontext_is_told_from_dev_by_its_name_or_its_metadata(kontext_dir: Path, tmp_path: Path) -> None:
    by_name = inspect_file(kontext_dir / "flux1-kontext-dev.safetensors").architecture
    assert (by_name.variant, by_name.label) == ("kontext", "FLUX.1 Kontext dev (transformer only)")
    assert by_name.decided_by.endswith("+ file name") and by_name.needs == (("clip_l", 32), ("t5xxl", 32), ("vae", 16))
    by_metadata = inspect_file(make_tiny_flux(tmp_path / "edit-model.safetensors", kontext=True)).architecture
    assert (by_metadata.variant, by_metadata.decided_by.split(" + ")[1]) == ("kontext", "modelspec.architecture")
    assert inspect_file(kontext_dir / "flux1-dev.safetensors").architecture.variant == "dev"
    # schnell has no Kontext: the name of one that says so changes nothing
    schnell = inspect_file(make_tiny_flux(tmp_path / "kontext-schnell.safetensors", schnell=True)).architecture
    assert schnell.variant == "schnell"
    with pytest.raises(ValueError, match="no Kontext schnell"):
        make_tiny_flux(tmp_path / "x.safetensors", schnell=True, kontext=True)


def test_each_picture_is_read_at_a_kontext_size_and_placed_beside_the_others() -> None:
    # BFL's list at its own megapixel; a 16:9 photo takes 1392x752, its nearest shape
    assert reference_size(1024, 1024, 1024 * 1024) == (1024, 1024)
    assert reference_size(1920, 1080, 1024 * 1024) == (1392, 752)
    assert reference_size(96, 64, 64 * 64) == (80, 48)  # 3:2 is 1248x832, taken to a tiny job's area
    # ComfyUI's "offset": the first at the origin, the next below (the whole is not taller than wide),
    # the third to the right of both (now it is)
    assert placements([(4, 4)]) == [(0, 0)]
    assert placements([(4, 4), (4, 4), (4, 4)]) == [(0, 0), (4, 0), (0, 4)]
    assert placements([(2, 6), (2, 6)]) == [(0, 0), (2, 0)]
    assert placements([(6, 2), (6, 2)]) == [(0, 0), (0, 2)]


def test_an_infotexts_edit_pictures_are_sha256s_and_few() -> None:
    one, two = "a" * 64, "B" * 64
    assert read_hashes(f"{one}, {two}", 3) == (one, two.lower())
    assert read_hashes("", 3) == ()
    for hostile in ("../../etc/passwd", "a" * 63, f"{one}\n{two}", "g" * 64):
        with pytest.raises(ValueError, match="is not a picture's sha256"):
            read_hashes(hostile, 3)
    with pytest.raises(ValueError, match="names 4 input pictures; at most 3"):
        read_hashes(",".join([one] * 4), 3)


def parts(models: Path) -> tuple[ComponentUse, ...]:
    roles = {"clip-l": "clip_l", "t5xxl": "t5xxl", "flux-vae": "vae"}
    return tuple(
        ComponentUse(roles[kind], name, str(models / folder / name), kind[0] * 64) for kind, (folder, name) in PART_FILES.items()
    )


def test_the_worker_reads_the_pictures_and_the_instruction(kontext_dir: Path) -> None:
    from gpu_worker.cache import PipelineCache
    from gpu_worker.loader import load_pipeline
    from gpu_worker.runner import BatchRunner

    path = kontext_dir / "flux1-kontext-dev.safetensors"
    ins = inspect_file(path)
    load = LoadRequest(str(path), "kontext", "flux", ins.architecture.label, "safetensors", ins.pipeline_config, "flow", "k" * 64, components=parts(kontext_dir))
    events: list[object] = []
    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu"))
    runner = BatchRunner("cpu", cache, events.append, lambda job_id: False)

    def edit(instruction: str, *pictures: bytes) -> tuple[np.ndarray, str]:
        events.clear()
        hashes = tuple(f"{i:064x}" for i in range(len(pictures)))
        batch = RunBatch.of(
            "b", load, (JobPart("j", instruction, "", (7,)),), 64, 48, 4, 1.0, "Euler", "Automatic",
            edit_pngs=pictures, edit_images=hashes,
        )  # fmt: skip
        runner.run(batch)
        [done] = [e for e in events if isinstance(e, JobDone)]
        image = Image.open(io.BytesIO(done.images[0].png))
        return np.asarray(image), image.info["parameters"]

    red, written = edit("make it night", png((200, 30, 30)))
    assert red.shape == (48, 64, 3)  # the job's size, whatever the picture's
    assert [e.step for e in events if isinstance(e, BatchProgress)] == [1, 2, 3, 4]
    _, _, params = parse_generation_parameters(written)
    assert params[INFOTEXT_KEY] == f"{0:064x}" and params["Distilled CFG Scale"] == "3.5"
    assert "Denoising strength" not in params  # nothing is redrawn from the picture
    blue, _ = edit("make it night", png((30, 30, 200)))
    assert not np.array_equal(red, blue)  # the same seed and instruction: the picture decides
    worded, _ = edit("put a hat on it", png((200, 30, 30)))
    assert not np.array_equal(red, worded)  # the same picture: the instruction decides
    assert np.array_equal(red, edit("make it night", png((200, 30, 30)))[0])  # and nothing else
    two, _ = edit("make it night", png((200, 30, 30)), png((30, 200, 30), (64, 64)))
    three, _ = edit("make it night", png((200, 30, 30)), png((30, 200, 30), (64, 64)), png((30, 30, 200), (48, 96)))
    assert not np.array_equal(red, two) and not np.array_equal(two, three)  # every picture is read

    # One picture sits where diffusers' FluxKontextPipeline puts it: position index 1, no offset.
    loaded, _ = cache.get(load)
    pipe = KontextPipeline.from_pipe(loaded.pipeline)
    reference = torch.randn(1, 16, 6, 8)
    pipe.references = [reference]
    _, tokens, _, ids = pipe.prepare_latents(None, 2, 16, 48, 64, torch.float32, torch.device("cpu"))
    _, their_tokens, _, their_ids = super(KontextPipeline, pipe).prepare_latents(reference, 2, 16, 48, 64, torch.float32, torch.device("cpu"))
    assert torch.equal(tokens, their_tokens) and torch.equal(ids, their_ids)
    pipe.references = [reference, reference]  # the second below the first
    _, tokens, _, ids = pipe.prepare_latents(None, 1, 16, 48, 64, torch.float32, torch.device("cpu"))
    assert tokens.shape == (1, 24, 64) and ids[12:, 1].min() == 3 and ids[:, 0].eq(1).all()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(kontext_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    """The real service and a worker over the Kontext models folder, its parts not yet registered."""
    async with jobs_over(kontext_dir, tmp_path_factory.mktemp("kontext-jobs")) as jobs:
        yield jobs


async def made(jobs: Jobs, plan) -> tuple[np.ndarray, dict[str, str], str]:
    """The picture, its infotext's parameters as A1111 reads them, and the job's id."""
    [handle] = await jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    made.infotext = image.info["parameters"]  # type: ignore[attr-defined]
    return np.asarray(image), parse_generation_parameters(image.info["parameters"])[2], done.job.id


@pytest.mark.asyncio(loop_scope="module")
async def test_an_edit_through_the_service_and_every_refusal_before_the_queue(jobs: Jobs, kontext_dir: Path) -> None:
    assert jobs.text_encoders is not None and jobs.vaes is not None and jobs.inputs is not None
    red = png((200, 30, 30))

    async def refused(match: str, **how) -> None:
        with pytest.raises(EaselError, match=match) as caught:
            await jobs.plan_edit(HOST, HERE, how.pop("instruction", "make it night"), how.pop("pictures", [red]), **how)
        assert "\n" not in str(caught.value) and jobs.generation.status().queued == 0

    await refused(r"^flux1-kontext-dev needs a CLIP-L text encoder .*put t5xxl_fp16\.safetensors in models/text_encoders")
    for folder in ("text_encoders", "VAE"):
        shutil.copytree(kontext_dir / folder, jobs.registry.models_root / folder)
    await jobs.text_encoders.scan()
    await jobs.vaes.scan()
    await refused(r"^flux1-dev \(FLUX\.1 dev \(transformer only\)\) cannot edit pictures", checkpoint="flux1-dev")
    await refused(r"^an edit takes at most 3 input pictures, not 4", pictures=[red] * 4)
    await refused(r"^an edit needs a picture to change", pictures=[])
    await refused(r"not a PNG, JPEG or WebP picture", pictures=[b"MZ\x90\x00not a picture"])
    await refused(r"^the prompt is empty", instruction="  ")

    # No checkpoint named: the one edit model installed.
    picture, params, job_id = await made(jobs, await jobs.plan_edit(HOST, HERE, "make it night", [red], given={"seed": 5, "steps": 3}))
    assert (params["Model"], params["Steps"], params["Distilled CFG Scale"], params["Seed"]) == ("flux1-kontext-dev", "3", "2.5", "5")
    [kept] = read_hashes(params[INFOTEXT_KEY], 3)
    assert (jobs.inputs.folder / f"{kept}.png").is_file()  # kept for reruns, by the hash the infotext names
    assert picture.shape == (64, 96, 3)  # the picture's shape at the model's size (tiny: 64)

    text = made.infotext  # type: ignore[attr-defined]
    rerolled, again, _ = await made(jobs, await jobs.plan_rerun(HOST, HERE, job_id, seed=same_seed))
    assert np.array_equal(rerolled, picture) and again[INFOTEXT_KEY] == params[INFOTEXT_KEY]
    here_again, _, _ = await made(jobs, await jobs.plan_from_infotext(HOST, HERE, parse_infotext(text)))
    assert np.array_equal(here_again, picture)  # "Make this here" reruns the edit
    blue, _, _ = await made(jobs, await jobs.plan_edit(HOST, HERE, "make it night", [png((30, 30, 200))], given={"seed": 5, "steps": 3}))
    assert not np.array_equal(blue, picture)

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    varied = await jobs.plan_rerun(HOST, HERE, job_id, init_image=buffer.getvalue(), strength=0.5)
    assert varied.specs[0].parameters.edit_images == () and varied.specs[0].edit_pngs == ()  # Vary redraws the result

    hostile = text.replace(kept, "../../../etc/passwd")
    with pytest.raises(EaselError, match=r"^the picture's Edit images '\.\./\.\./\.\./etc/passwd' is not a picture's sha256"):
        await jobs.plan_from_infotext(HOST, HERE, parse_infotext(hostile))
    (jobs.inputs.folder / f"{kept}.png").unlink()
    with pytest.raises(EaselError, match=r"^an input picture of this edit is no longer kept here"):
        await jobs.plan_from_infotext(HOST, HERE, parse_infotext(text))
    await jobs.registry.remove("flux1-kontext-dev")
    with pytest.raises(EaselError, match=r"^no checkpoint here can edit pictures; ask the bot's owner to install one \(FLUX\.1 Kontext: put flux1-kontext-dev"):
        await jobs.plan_edit(HOST, HERE, "make it night", [red])


@pytest.mark.slow
def test_generate_edits_a_picture_from_the_command_line(env: Path, cli) -> None:
    models = env / "models"
    made_file = cli("make-tiny-checkpoint", "--arch", "flux-kontext", "--parts", str(models), str(models / "flux1-kontext-dev.safetensors"))
    assert made_file.code == 0, made_file.err
    assert "text_encoders/t5xxl_fp16.safetensors" in made_file.out and (models / "VAE" / "ae.safetensors").is_file()
    assert cli("checkpoints", "scan").code == 0
    inspected = cli("inspect", str(models / "flux1-kontext-dev.safetensors"))
    assert "FLUX.1 Kontext dev (transformer only)" in inspected.out and "Edits:         pictures, by instruction" in inspected.out
    Image.open(io.BytesIO(png((200, 30, 30)))).save(env / "red.png")
    edited = cli("generate", "--edit", str(env / "red.png"), "--prompt", "make it night", "--steps", "2", "--seed", "3", "--out", str(env / "out"))
    assert edited.code == 0, edited.err
    assert "an edit of 1 picture" in edited.out
    [result] = (env / "out").glob("*.png")
    _, _, params = parse_generation_parameters(Image.open(result).info["parameters"])
    assert params["Model"] == "flux1-kontext-dev" and len(params[INFOTEXT_KEY]) == 64


@pytest.mark.asyncio
async def test_a_kontext_file_registered_before_it_was_known_becomes_kontext(kontext_dir: Path, tmp_path: Path) -> None:
    """Migration 0020: files a scan registered as FLUX.1 dev, and whose name says Kontext, are Kontext."""
    from bot.db import connect, load_migrations, migrate, transaction
    from bot.generation.checkpoint_ref import CheckpointRef

    migrations = load_migrations()
    [latest] = [m for m in migrations if m.version == 20]
    db = await connect(tmp_path / "old.sqlite3")
    try:
        await migrate(db, [m for m in migrations if m.version < latest.version])
        registry = CheckpointRegistry(db, kontext_dir)
        await registry.scan()
        async with transaction(db) as writer:  # as an older release registered them
            await writer.execute(
                "UPDATE checkpoints SET variant = 'dev', architecture = 'FLUX.1 dev (transformer only)', "
                "inspection_json = json_set(inspection_json, '$.architecture', 'FLUX.1 dev (transformer only)', "
                "'$.architecture_info.variant', 'dev', '$.architecture_info.label', 'FLUX.1 dev (transformer only)')"
            )
        assert (await registry.find("flux1-kontext-dev")).variant == "dev"
        await migrate(db, migrations)
        kontext, dev = await registry.find("flux1-kontext-dev"), await registry.find("flux1-dev")
        assert (kontext.variant, kontext.architecture) == ("kontext", "FLUX.1 Kontext dev (transformer only)")
        assert CheckpointRef.from_entry(kontext).variant == "kontext"
        assert kontext.inspection["architecture"] == kontext.inspection["architecture_info"]["label"] == kontext.architecture
        assert (dev.variant, dev.architecture) == ("dev", "FLUX.1 dev (transformer only)")
    finally:
        await db.close()


def test_parts_are_written_only_beside_a_transformer_only_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpu_worker.__main__ import main

    assert main(["make-tiny-checkpoint", "--arch", "flux", "--parts", str(tmp_path), str(tmp_path / "aio.safetensors")]) == 1
    assert "--parts is for the transformer-only Flux files" in capsys.readouterr().err
    assert not (tmp_path / "aio.safetensors").exists() and not (tmp_path / "text_encoders").exists()
