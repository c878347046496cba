"""LoRAs: what a file is, the registry, the tags, the rules, and the real worker applying them.

The worker tests share one service and one worker process; the order of the jobs inside a test is
the point (a job after a LoRA job on the same cached pipeline must equal one on a fresh pipeline).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from bot.checkpoints.registry import CheckpointRegistry
from bot.checkpoints.safetensors_header import read_header
from bot.db import open_database
from bot.generation.jobs import Failed, Finished, Job, new_job_id
from bot.generation.service import GenerationService
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.model_files import add_model_file, scan_models
from bot.networks.detection import detect_adapter
from bot.networks.registry import LORA_FOLDERS, LoraRegistry, network_folders
from bot.rules.limits import GenerationError, Limits
from bot.rules.network_selection import lora_tags, read_tag
from common.errors import EaselError, RegistryError
from common.prompt_syntax import extract_extra_networks
from common.tensors import TensorInfo
from common.worker_config import WorkerConfig
from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.helpers import with_metadata

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # beside the module's shared worker

HOST = Asker.host()
HERE = Place.command_line()
SERVER = Place("g1", "c1", adult=False)
ALICE = Asker("alice", "alice")


def info(name: str, shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo(name, "F16", shape)


# --- what a file is ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "metadata", "base", "decided_by"),
    [
        (
            {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 768)},
            {},
            "sd1",
            "attn2_to_k",
        ),
        (
            {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 1024)},
            {},
            "sd2",
            "attn2_to_k",
        ),
        (
            {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 2048)},
            {},
            "sdxl",
            "attn2_to_k",
        ),
        ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 1280)}, {}, "sdxl", "lora_te2_"),
        (
            {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768)},
            {},
            "sd1",
            "attn2.to_k",
        ),
        (
            {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 768)},
            {"ss_base_model_version": "sdxl_base_v1-0"},
            "sdxl",
            "ss_base_model_version",
        ),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (8, 768)}, {"ss_v2": "True"}, "sd2", "ss_v2"),
        (
            {"lora_te_x.lora_down.weight": (8, 16)},
            {"modelspec.architecture": "stable-diffusion-v1/lora"},
            "sd1",
            "modelspec.architecture",
        ),
        ({"lora_te_x.lora_down.weight": (8, 16)}, {}, "", ""),
    ],
)
def test_the_base_model_comes_from_metadata_first_then_from_the_keys(tensors, metadata, base, decided_by) -> None:
    adapter = detect_adapter({k: info(k, v) for k, v in tensors.items()}, metadata)
    assert adapter is not None and adapter.kind == "lora"
    assert adapter.base == base and decided_by in adapter.decided_by
    assert adapter.loadable == bool(base)
    assert adapter.layout == ("peft" if next(iter(tensors)).startswith("unet.") else "kohya")


def test_lycoris_loha_and_lokr_are_recognised_and_refused_with_a_reason() -> None:
    sd1 = {"ss_base_model_version": "sd_v1"}
    loha = detect_adapter({k: info(k, (4, 4)) for k in ("lora_unet_x.hada_w1_a", "lora_unet_x.hada_w1_b")}, sd1)
    lokr = detect_adapter({"lora_unet_x.lokr_w1": info("lora_unet_x.lokr_w1", (4, 4))}, sd1)
    assert loha is not None and loha.kind == "loha" and not loha.loadable and "LoHa" in loha.reason
    assert lokr is not None and lokr.kind == "lokr" and not lokr.loadable
    assert (
        detect_adapter(
            {"model.diffusion_model.out.2.weight": info("model.diffusion_model.out.2.weight", (4, 320, 3, 3))}, {}
        )
        is None
    )


def test_a1111_short_hash_is_the_sha256_after_the_header(tiny_loras: Path, tmp_path: Path) -> None:
    from common.hashing import addnet_hash

    path = tiny_loras / "lora-sd1.safetensors"
    data = path.read_bytes()
    start = 8 + struct.unpack("<Q", data[:8])[0]
    assert addnet_hash(path) == hashlib.sha256(data[start:]).hexdigest()
    # New metadata: a new file hash, the same LoRA hash (as A1111 intends).
    other = with_metadata(path, tmp_path / "renamed.safetensors", {"ss_output_name": "renamed"})
    assert hashlib.sha256(other.read_bytes()).hexdigest() != hashlib.sha256(data).hexdigest()
    assert addnet_hash(other) == addnet_hash(path)


# --- the registry --------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def folders(
    tmp_path: Path, tiny_dir: Path, tiny_loras: Path
) -> AsyncIterator[tuple[CheckpointRegistry, LoraRegistry, Path]]:
    models = tmp_path / "models"
    (models / "Lora" / "styles").mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "tiny-sd1.safetensors")
    shutil.copy(tiny_loras / "lora-sd1.safetensors", models / "Lora" / "styles" / "inky.safetensors")
    shutil.copy(tiny_loras / "lora-sdxl.safetensors", models / "Lora" / "xl-ink.safetensors")
    db = await open_database(tmp_path / "easel.sqlite3")
    yield CheckpointRegistry(db, models), LoraRegistry(db, models), models
    await db.close()


@on_module_loop
async def test_scan_registers_loras_apart_from_checkpoints(folders) -> None:
    checkpoints, loras, models = folders
    (models / "Lora" / "styles" / "inky.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (models / "Lora" / "styles" / "inky.civitai.info").write_text(json.dumps({"trainedWords": ["inkwash"]}))
    report, [lora_report] = await scan_models(checkpoints, [loras])
    assert [e.name for e in report.added] == ["tiny-sd1"] and not report.errors
    assert sorted(e.name for e in lora_report.added) == ["inky", "xl-ink"]
    inky = await loras.get("inky")
    assert inky.base == "sd1" and inky.decided_by == "ss_base_model_version" and inky.loadable
    assert inky.relative_path == "styles/inky.safetensors" and inky.rank == 4
    assert inky.trigger_words[:2] == ["inkwash", "easel style"]  # Civitai first, then modelspec, then kohya tags
    assert inky.preview_path and inky.preview_path.endswith("inky.preview.png")
    assert inky.sha256 == hashlib.sha256((models / "Lora/styles/inky.safetensors").read_bytes()).hexdigest()
    assert len(inky.short_hash) == 12 and inky.alias == "lora-sd1"  # kohya's ss_output_name
    assert (await loras.find("LORA-SD1")) == inky and (await loras.find(inky.short_hash)) == inky
    assert (await loras.find(inky.autov2)) == inky
    again, [lora_again] = await scan_models(checkpoints, [loras])
    assert lora_again.unchanged == 2 and not lora_again.added and again.unchanged == 1
    (models / "Lora" / "xl-ink.safetensors").unlink()
    assert [e.name for e in (await loras.scan()).missing] == ["xl-ink"]


@on_module_loop
async def test_a_lora_outside_the_lora_folder_is_not_taken_for_a_checkpoint(folders, tiny_loras: Path) -> None:
    checkpoints, loras, models = folders
    shutil.copy(tiny_loras / "lora-sd1.safetensors", models / "stray.safetensors")
    report, _ = await scan_models(checkpoints, [loras])
    assert report.errors == [
        ("stray.safetensors", "stray.safetensors is a LoRA, not a checkpoint; put it in the models/Lora folder")
    ]
    assert await checkpoints.find("stray") is None
    await loras.remove("xl-ink")  # and back, as `checkpoints add` and /admin add take it: the folder decides
    entry = await add_model_file(checkpoints, [loras], Path("Lora/xl-ink.safetensors"))
    assert entry.name == "xl-ink" and await loras.find("xl-ink") is not None


@on_module_loop
async def test_hostile_and_escaping_files_in_the_lora_folder_change_nothing(folders, tmp_path: Path) -> None:
    _, loras, models = folders
    lora_dir = models / "Lora"
    (lora_dir / "truncated.safetensors").write_bytes(struct.pack("<Q", 10_000) + b'{"a":')
    (lora_dir / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    (lora_dir / "checkpoint.safetensors").write_bytes((models / "tiny-sd1.safetensors").read_bytes())
    outside = tmp_path / "secret.safetensors"
    shutil.copy(lora_dir / "xl-ink.safetensors", outside)
    os.symlink(outside, lora_dir / "link.safetensors")
    report = await loras.scan()
    reasons = dict(report.errors)
    assert set(reasons) == {
        "truncated.safetensors",
        "huge-header.safetensors",
        "checkpoint.safetensors",
        "link.safetensors",
    }
    assert "not a LoRA" in reasons["checkpoint.safetensors"] and "outside" in reasons["link.safetensors"]
    assert all("\n" not in r for r in reasons.values())
    assert sorted(e.name for e in report.added) == ["inky", "xl-ink"]
    with pytest.raises(RegistryError, match="is not a file in the LoRA folders"):
        await loras.add(outside)
    with pytest.raises(RegistryError, match="is not a file in the LoRA folders"):
        await loras.add(Path("../../secret.safetensors"))


@on_module_loop
async def test_a1111_layout_keeps_loras_beside_the_stable_diffusion_folder(tmp_path: Path, tiny_loras: Path) -> None:
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "Lora").mkdir()
    shutil.copy(tiny_loras / "lora-sd2.safetensors", tmp_path / "models" / "Lora" / "sd2-thing.safetensors")
    root = tmp_path / "models" / "Stable-diffusion"
    assert network_folders(root, LORA_FOLDERS) == [(tmp_path / "models" / "Lora").resolve()]
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        report = await LoraRegistry(db, root).scan()
        assert [(e.name, e.base) for e in report.added] == [("sd2-thing", "sd2")]
    finally:
        await db.close()


# --- tags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "te", "unet"),
    [
        ("<lora:x>", 1.0, 1.0),
        ("<lora:x:0.6>", 0.6, 0.6),
        ("<lora:x:0.5:1.2>", 0.5, 1.2),  # A1111: text encoder first, then UNet
        ("<lora:x:te=0.3>", 0.3, 0.3),
        ("<lora:x:1:unet=0>", 1.0, 0.0),
        ("<lyco:x:0.7>", 0.7, 0.7),
    ],
)
def test_tags_read_as_a1111_reads_them(tag: str, te: float, unet: float) -> None:
    [network] = extract_extra_networks(f"a cat {tag}")[1]
    assert read_tag(network).te == te and read_tag(network).unet == unet


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:x:strong>", "'strong' is not a number"),
        ("<lora:x:nan>", "finite"),
        ("<lora:x:1:dyn=4:foo=1>", "unknown setting 'foo'"),
        ("<lora:x:1> and <lora:X:0.5>", "named twice"),
    ],
)
def test_bad_tags_are_refused_in_one_line(prompt: str, message: str) -> None:
    with pytest.raises(GenerationError, match=message):
        lora_tags(prompt)


# --- rules, before anything is queued ------------------------------------------------------------


@dataclass
class World:
    jobs: Jobs
    service: GenerationService
    loras: LoraRegistry


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tiny_dir: Path, tiny_loras: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("loras")
    models = root / "models"
    (models / "Lora").mkdir(parents=True)
    for arch in ("sd1", "sd2", "sdxl"):
        shutil.copy(tiny_dir / f"tiny-{arch}.safetensors", models / f"tiny-{arch}.safetensors")
        shutil.copy(tiny_loras / f"lora-{arch}.safetensors", models / "Lora" / f"ink-{arch}.safetensors")
    shutil.copy(tiny_loras / "locon-sd1.safetensors", models / "Lora" / "grain.safetensors")
    for n in range(6):  # the same tensors under new metadata: six more LoRAs for the count limit
        with_metadata(tiny_loras / "lora-sd1.safetensors", models / "Lora" / f"more-{n}.safetensors", {"n": str(n)})
    with_metadata(tiny_loras / "lora-sd1.safetensors", models / "Lora" / "spicy.safetensors", {"n": "spicy"})
    db = await open_database(root / "easel.sqlite3")
    checkpoints, loras = CheckpointRegistry(db, models), LoraRegistry(db, models)
    await scan_models(checkpoints, [loras])
    await db.execute("UPDATE loras SET nsfw = 1 WHERE name = 'spicy'")
    await db.commit()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    yield World(Jobs(checkpoints, service, None, loras), service, loras)
    await service.close()
    await db.close()


async def plan(w: World, prompt: str, checkpoint: str = "tiny-sd1", place: Place = HERE, **options):
    return await w.jobs.plan_imagine(
        HOST if place.host else ALICE,
        place,
        ImagineOptions.of(prompt=prompt, checkpoint=checkpoint, steps=3, seed=11, **options),
    )


@on_module_loop
@pytest.mark.parametrize(
    ("prompt", "checkpoint", "message"),
    [
        ("a fox <lora:nothing:1>", "tiny-sd1", "no LoRA named 'nothing'"),
        ("a fox <lora:ink-sd1:1>", "tiny-sdxl", "the LoRA ink-sd1 is for SD1.x and tiny-sdxl is SDXL base"),
        ("a fox <lora:ink-sdxl:1>", "tiny-sd1", "is for SDXL"),
        ("a fox <lora:ink-sd1:4.5>", "tiny-sd1", "strength 4.5 is outside -4 to 4"),
        ("a fox <lora:ink-sd1:1> <lora:lora-sd1:0.5>", "tiny-sd1", "the LoRA ink-sd1 is named twice"),  # and its alias
        ("a fox <lora:ink-sd1:1:-9>", "tiny-sd1", "UNet strength -9 is outside"),
        (
            "a " + " ".join(f"<lora:more-{n}:0.1>" for n in range(6)),
            "tiny-sd1",
            "at most 5 LoRAs per picture; this prompt names 6",
        ),
    ],
)
async def test_loras_that_cannot_apply_are_refused_before_queueing(
    world: World, prompt: str, checkpoint: str, message: str
) -> None:
    queued = len(world.service._queue.order())
    with pytest.raises(EaselError, match=message):
        await plan(world, prompt, checkpoint)
    assert len(world.service._queue.order()) == queued


@on_module_loop
async def test_an_nsfw_lora_only_where_nsfw_is_allowed_and_the_menu_option_becomes_a_tag(world: World) -> None:
    with pytest.raises(EaselError, match="the LoRA spicy is marked NSFW"):
        await plan(world, "a fox <lora:spicy:0.5>", place=SERVER)
    assert (await plan(world, "a fox <lora:spicy:0.5>", place=Place(adult=True))).specs[0].loras
    assert "spicy" not in [e.name for e in await world.jobs.loras_shown(SERVER)]
    assert [e.name for e in await world.jobs.loras_shown(HERE, "sdxl")] == ["ink-sdxl"]
    spec = (await plan(world, "a fox", lora="ink-sd1", lora_strength=0.75)).specs[0]
    assert spec.parameters.prompt == "a fox <lora:ink-sd1:0.75>" and spec.loras[0].te == 0.75


@on_module_loop
async def test_batches_only_join_jobs_with_equal_loras(world: World) -> None:
    def job(prompt: str) -> Job:
        return Job(new_job_id(), spec)

    keys = []
    for prompt in ("a fox", "a fox <lora:ink-sd1:0.5>", "a cat <lora:ink-sd1:0.5>", "a fox <lora:ink-sd1:0.6>"):
        spec = (await plan(world, prompt)).specs[0]
        keys.append(job(prompt).batch_key)
    assert keys[1] == keys[2] and len({keys[0], keys[1], keys[3]}) == 3
    notes = (await plan(world, "a fox <hypernet:h:1>", negative="<lora:ink-sd1:1> blurry")).specs[0].notes
    assert any("negative prompt are not applied" in n and "<lora:ink-sd1:1>" in n for n in notes)
    assert any("only LoRA tags" in n and "<hypernet:h:1>" in n for n in notes)


# --- through the real worker ---------------------------------------------------------------------


async def picture(w: World, prompt: str, checkpoint: str = "tiny-sd1") -> tuple[np.ndarray, dict[str, str]]:
    [handle] = await w.jobs.start(await plan(w, prompt, checkpoint))
    events = [event async for event in handle.events()]
    done = events[-1]
    assert isinstance(done, Finished), events[-1]
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image).copy(), parse_infotext(image.info["parameters"])[2]


@on_module_loop
async def test_a_lora_changes_the_picture_and_leaves_no_trace_on_the_cached_pipeline(world: World) -> None:
    before, params = await picture(world, "a lighthouse")
    assert "Lora hashes" not in params
    with_lora, params = await picture(world, "a lighthouse <lora:ink-sd1:1>")
    entry = await world.loras.get("ink-sd1")
    assert params["Lora hashes"] == f"ink-sd1: {entry.short_hash}"
    assert np.abs(with_lora.astype(int) - before.astype(int)).max() > 10
    text_encoder_only, _ = await picture(world, "a lighthouse <lora:ink-sd1:1:0>")
    assert not np.array_equal(text_encoder_only, with_lora) and not np.array_equal(text_encoder_only, before)
    after, _ = await picture(world, "a lighthouse")  # same cached pipeline, adapter still resident
    assert np.array_equal(after, before)
    zero, params = await picture(world, "a lighthouse <lora:ink-sd1:0>")
    assert np.array_equal(zero, before) and "Lora hashes" not in params
    again, _ = await picture(world, "a lighthouse <lora:ink-sd1:1>")  # switched back on, not reloaded
    assert np.array_equal(again, with_lora)


@on_module_loop
async def test_two_loras_at_once_on_sdxl_with_the_kohya_ldm_names(world: World) -> None:
    plain, _ = await picture(world, "a harbour", "tiny-sdxl")
    one, params = await picture(world, "a harbour <lora:ink-sdxl:0.8>", "tiny-sdxl")
    assert not np.array_equal(plain, one) and params["Lora hashes"].startswith("ink-sdxl: ")
    [handle] = await world.jobs.start(await plan(world, "a harbour <lora:ink-sdxl:0.8>", "tiny-sdxl"))
    assert isinstance([e async for e in handle.events()][-1], Finished)


@on_module_loop
async def test_a_lora_file_that_no_longer_fits_fails_the_job_with_a_line_and_spares_the_next(
    world: World, tiny_loras: Path
) -> None:
    entry = await world.loras.get("more-0")
    before, _ = await picture(world, "a mill")
    # The file changes behind the registry's back: now an SDXL LoRA under an SD1 LoRA's name.
    shutil.copyfile(tiny_loras / "lora-sdxl.safetensors", entry.path)
    [handle] = await world.jobs.start(await plan(world, "a mill <lora:more-0:1>"))
    failed = [e async for e in handle.events()][-1]
    assert isinstance(failed, Failed) and "LoRA more-0" in failed.message and "\n" not in failed.message
    after, _ = await picture(world, "a mill")
    assert np.array_equal(after, before)


# --- baking LoRAs into a checkpoint --------------------------------------------------------------


@on_module_loop
async def test_a_baked_checkpoint_draws_what_the_lora_draws(world: World) -> None:
    from safetensors.torch import load_file

    from bot.checkpoints.merging import BakeRequest, MergeService

    checkpoints = world.jobs.registry
    merges = MergeService(checkpoints, world.loras)
    with pytest.raises(EaselError, match="is for SDXL"):
        await merges.bake(BakeRequest("tiny-sd1", "<lora:ink-sdxl:1>"))
    with pytest.raises(EaselError, match="name the LoRAs"):
        await merges.bake(BakeRequest("tiny-sd1", "ink-sd1"))
    entry = await merges.bake(BakeRequest("tiny-sd1", "<lora:ink-sd1:0.8:0.6>", name="inked"))
    assert [p["role"] for p in entry.lineage] == ["primary"] and entry.lineage[0]["name"] == "tiny-sd1.safetensors"
    recipe = json.loads(read_header(entry.path).metadata["sd_merge_recipe"])
    lora = await world.loras.get("ink-sd1")
    assert recipe["loras"] == [
        {"name": "ink-sd1", "sha256": lora.sha256, "short_hash": lora.short_hash, "te": 0.8, "unet": 0.6}
    ]
    original, baked = load_file((await checkpoints.get("tiny-sd1")).path), load_file(entry.path)
    changed = [k for k in original if not torch.equal(original[k], baked[k])]
    modules = [k for k in load_file(lora.path) if k.endswith(".lora_down.weight")]
    assert set(baked) == set(original) and len(changed) == len(modules)  # one tensor per LoRA layer, nothing else
    assert not any(k.startswith("first_stage_model.") for k in changed)
    # One step, so the comparison is not lost in a random model's chaos: the same picture, to rounding.
    with_lora = await one_step(world, "a lighthouse <lora:ink-sd1:0.8:0.6>", "tiny-sd1")
    from_baked = await one_step(world, "a lighthouse", "inked")
    plain = await one_step(world, "a lighthouse", "tiny-sd1")
    assert np.abs(with_lora - from_baked).max() <= 2 < np.abs(plain - from_baked).max()


async def one_step(w: World, prompt: str, checkpoint: str) -> np.ndarray:
    options = ImagineOptions.of(prompt=prompt, checkpoint=checkpoint, steps=1, seed=3)
    [handle] = await w.jobs.start(await w.jobs.plan_imagine(HOST, HERE, options))
    done = [e async for e in handle.events()][-1]
    assert isinstance(done, Finished), done
    return np.asarray(Image.open(io.BytesIO(done.job.images[0].png))).astype(int)


@on_module_loop
async def test_sd2_loras_and_lycoris_locon_apply_through_the_worker(world: World) -> None:
    plain, _ = await picture(world, "a canyon", "tiny-sd2")
    inked, params = await picture(world, "a canyon <lora:ink-sd2:1>", "tiny-sd2")
    assert not np.array_equal(plain, inked) and params["Lora hashes"].startswith("ink-sd2: ")
    grain = await world.loras.get("grain")
    assert (grain.kind, grain.label) == ("locon", "LoCon (LyCORIS) for SD1.x")
    before, _ = await picture(world, "a canyon")
    with_locon, params = await picture(world, "a canyon <lora:grain:1>")
    assert not np.array_equal(before, with_locon) and params["Lora hashes"] == f"grain: {grain.short_hash}"


@on_module_loop
async def test_the_lora_menu_offers_names_first_then_titles_and_trigger_words(world: World) -> None:
    from cogs.utils.lora_option import lora_choices

    entries = await world.jobs.loras_shown(HERE)
    names = [c.value for c in lora_choices(entries, "ink")]
    assert names[:3] == ["ink-sd1", "ink-sd2", "ink-sdxl"]
    assert "grain" in [c.value for c in lora_choices(entries, "easel style")]  # its trigger words
    assert [c.value for c in lora_choices(await world.jobs.loras_shown(HERE, "sdxl"), "")] == ["ink-sdxl"]
    assert all(len(c.name) <= 100 for c in lora_choices(entries, "")) and len(lora_choices(entries, "")) <= 25


@on_module_loop
async def test_lora_and_embedding_folders_may_be_named_in_the_configuration(
    tmp_path: Path, tiny_loras: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.config import load_settings
    from bot.networks.registry import network_registries
    from common.errors import ConfigError

    (tmp_path / "models").mkdir()
    shared = tmp_path / "shared-loras"
    shared.mkdir()
    shutil.copy(tiny_loras / "lora-sdxl.safetensors", shared / "far.safetensors")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EASEL_LORA_DIRS", f"{shared}")
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        loras, embeddings = network_registries(db, load_settings())
        assert loras.folders == [shared.resolve()] and embeddings.folders == []
        assert [(e.name, e.base) for e in (await loras.scan()).added] == [("far", "sdxl")]
    finally:
        await db.close()
    monkeypatch.setenv("EASEL_EMBEDDING_DIRS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"embedding_dirs: .*nowhere is not a folder"):
        load_settings()


@on_module_loop
async def test_a_lora_in_diffusers_peft_layout_applies_too(world: World, tiny_dir: Path) -> None:
    from safetensors.torch import save_file

    from gpu_worker.testing.tiny import tiny_components
    from gpu_worker.testing.tiny_networks import lora_state_dict

    path = world.loras.folders[0] / "peft-style.safetensors"
    state = lora_state_dict(tiny_components("sd1"), "sd1", seed=4, peft=True)
    await asyncio.to_thread(save_file, state, str(path), {"ss_base_model_version": "sd_v1"})
    entry = await world.loras.add(path)
    assert (entry.layout, entry.base, entry.kind) == ("peft", "sd1", "lora")
    before, _ = await picture(world, "a quarry")
    after, params = await picture(world, "a quarry <lora:peft-style:1>")
    assert not np.array_equal(before, after) and params["Lora hashes"] == f"peft-style: {entry.short_hash}"


@on_module_loop
async def test_a_lora_name_may_hold_spaces_as_in_a1111(world: World, tiny_loras: Path) -> None:
    path = world.loras.folders[0] / "add detail.safetensors"
    await asyncio.to_thread(with_metadata, tiny_loras / "lora-sd1.safetensors", path, {"n": "spaces"})
    entry = await world.loras.add(path)
    assert entry.name == "add detail"
    _, params = await picture(world, "a quarry <lora:add detail:0.5>")
    assert params["Lora hashes"] == f"add detail: {entry.short_hash}"
