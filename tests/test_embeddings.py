"""Textual-inversion embeddings: what a file is, the registry, the words in prompts, and the real worker."""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from bot.checkpoints.architecture import detect_architecture
from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.jobs import Failed, Finished
from bot.generation.service import GenerationService
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.model_files import scan_models
from bot.networks.detection import detect_embedding
from bot.networks.registry import EmbeddingRegistry, LoraRegistry
from bot.rules.limits import Limits
from common.errors import EaselError
from common.prompt_chunks import CHUNK, PLACEHOLDER, chunk_prompt, words_for
from common.tensors import TensorInfo
from common.worker_config import WorkerConfig
from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.helpers import with_metadata

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # beside the module's shared worker


def info(name: str, shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo(name, "F32", shape)


@pytest.mark.parametrize(
    ("tensors", "metadata", "layout", "base", "vectors"),
    [
        ({"emb_params": (4, 768)}, {}, "safetensors", "sd1", 4),
        ({"emb_params": (2, 1024)}, {}, "safetensors", "sd2", 2),
        ({"string_to_param.*": (8, 768)}, {}, "a1111", "sd1", 8),
        ({"<cat-toy>": (768,)}, {}, "diffusers", "sd1", 1),
        ({"clip_l": (5, 768), "clip_g": (5, 1280)}, {}, "sdxl", "sdxl", 5),
        (
            {"emb_params": (2, 32)},
            {"modelspec.architecture": "stable-diffusion-v1/textual-inversion"},
            "safetensors",
            "sd1",
            2,
        ),
    ],
)
def test_embedding_layouts_and_bases(tensors, metadata, layout, base, vectors) -> None:
    found = detect_embedding({k: info(k, v) for k, v in tensors.items()}, metadata)
    assert found is not None and (found.layout, found.base, found.vectors, found.loadable) == (
        layout,
        base,
        vectors,
        True,
    )
    arch = detect_architecture({k: info(k, v) for k, v in tensors.items()}, metadata)
    assert arch.family == "embedding" and not arch.runnable


def test_what_is_not_an_embedding_is_not_taken_for_one() -> None:
    assert detect_embedding({"x": info("x", (2, 2))}) is None  # one odd tensor: not as wide as any encoder
    assert detect_embedding({"a": info("a", (2, 768)), "b": info("b", (2, 768))}) is None
    odd = detect_embedding({"emb_params": info("emb_params", (2, 640))})
    assert odd is not None and not odd.loadable and "640 wide" in odd.reason


def test_a_word_becomes_its_vectors_in_one_chunk(clip_tokenizer) -> None:
    words = words_for(clip_tokenizer, {"bad-hands": 3, "EasyNegative": 2})
    [chunk] = chunk_prompt("a cat, bad-hands, easynegative dog", clip_tokenizer, words)
    assert [name for _, name in chunk.fixes] == ["bad-hands", "EasyNegative"]  # CLIP lowercases: any case
    offset, _ = chunk.fixes[0]
    assert chunk.tokens[1 + offset : 1 + offset + 3] == [PLACEHOLDER] * 3
    [plain] = chunk_prompt("a cat, bad-hands, easynegative dog", clip_tokenizer)
    assert not plain.fixes and PLACEHOLDER not in plain.tokens
    # A word that would not fit in what is left of a chunk starts the next one.
    words = words_for(clip_tokenizer, {"wide": 10})
    chunks = chunk_prompt("cat " * 70 + "wide", clip_tokenizer, words)
    assert len(chunks) == 2 and chunks[1].fixes == [(0, "wide")] and len(chunks[0].tokens) == CHUNK + 2


@pytest.fixture(scope="module")
def clip_tokenizer():
    from common.bundled import CONFIG_ROOT
    from gpu_worker.families.sd_build import _tokenizer

    assert (CONFIG_ROOT / "sd1" / "tokenizer").is_dir()
    return _tokenizer(str(CONFIG_ROOT / "sd1" / "tokenizer"))


@dataclass
class World:
    jobs: Jobs
    embeddings: EmbeddingRegistry
    models: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tiny_dir: Path, tiny_loras: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("embeddings")
    models = root / "models"
    (models / "embeddings").mkdir(parents=True)
    for arch in ("sd1", "sdxl"):
        shutil.copy(tiny_dir / f"tiny-{arch}.safetensors", models / f"tiny-{arch}.safetensors")
    shutil.copy(tiny_loras / "embedding-sd1.safetensors", models / "embeddings" / "blotchy.safetensors")
    shutil.copy(tiny_loras / "embedding-sdxl.safetensors", models / "embeddings" / "xl-blotch.safetensors")
    # An A1111 .pt, read by the bot through its allow-list reader and by the worker with weights_only.
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "smudge", "step": 10},
               models / "embeddings" / "smudge.pt")  # fmt: skip
    db = await open_database(root / "easel.sqlite3")
    checkpoints, loras, embeddings = (
        CheckpointRegistry(db, models),
        LoraRegistry(db, models),
        EmbeddingRegistry(db, models),
    )
    _, [_, found] = await scan_models(checkpoints, [loras, embeddings])
    assert sorted(e.name for e in found.added) == ["blotchy", "smudge", "xl-blotch"], found.errors
    # The .pt has no modelspec: its 32-wide vectors fit no real model; say it is for SD1 (the tiny one).
    await db.execute("UPDATE embeddings SET base = 'sd1', loadable = 1, reason = '' WHERE name = 'smudge'")
    await db.commit()
    service = GenerationService(db, [WorkerConfig("cpu", log_level="WARNING")], Limits(max_queued_per_user=20))
    await service.start()
    yield World(Jobs(checkpoints, service, None, loras, embeddings), embeddings, models)
    await service.close()
    await db.close()


async def picture(w: World, prompt: str, negative: str = "", checkpoint: str = "tiny-sd1"):
    options = ImagineOptions.of(prompt=prompt, negative=negative, checkpoint=checkpoint, steps=3, seed=21)
    plan = await w.jobs.plan_imagine(Asker.host(), Place.command_line(), options)
    [handle] = await w.jobs.start(plan)
    done = [event async for event in handle.events()][-1]
    assert isinstance(done, Finished), done
    image = Image.open(io.BytesIO(done.job.images[0].png))
    return np.asarray(image).astype(int), parse_infotext(image.info["parameters"])[2], plan.specs[0]


@on_module_loop
async def test_an_embedding_in_the_negative_changes_the_picture_and_is_credited(world: World) -> None:
    before, params, _ = await picture(world, "a lighthouse", "ugly")
    assert "TI hashes" not in params
    with_word, params, spec = await picture(world, "a lighthouse", "ugly, Blotchy")
    entry = await world.embeddings.get("blotchy")
    assert params["TI hashes"] == f"blotchy: {entry.short_hash}" and entry.short_hash == entry.sha256[:12]
    assert [use.name for use in spec.embeddings] == ["blotchy"]
    again, _, _ = await picture(world, "a lighthouse", "ugly")  # the pipeline was never changed
    assert np.array_equal(again, before)
    await world.embeddings.remove("blotchy")  # the same text, now a plain word
    try:
        as_text, params, _ = await picture(world, "a lighthouse", "ugly, Blotchy")
    finally:
        await world.embeddings.add(world.models / "embeddings" / "blotchy.safetensors")
    assert "TI hashes" not in params and np.abs(as_text - with_word).max() > 10


@on_module_loop
async def test_a1111_pt_embeddings_and_sdxl_pairs_apply(world: World) -> None:
    pt, params, _ = await picture(world, "a smudge of paint")
    entry = await world.embeddings.get("smudge")
    assert params["TI hashes"] == f"smudge: {entry.short_hash}" and entry.format == "pickle"
    await world.embeddings.remove("smudge")
    try:
        as_text, _, _ = await picture(world, "a smudge of paint")
    finally:
        await world.embeddings.add(world.models / "embeddings" / "smudge.pt")
        await world.embeddings._update((await world.embeddings.get("smudge")).id, {"base": "sd1", "loadable": 1})
    assert np.abs(as_text - pt).max() > 10
    _, params, spec = await picture(world, "a harbour, xl-blotch", checkpoint="tiny-sdxl")
    assert params["TI hashes"].startswith("xl-blotch: ") and spec.notes == ()


@on_module_loop
async def test_an_embedding_for_another_model_is_noted_not_applied(world: World) -> None:
    _, params, spec = await picture(world, "a harbour, blotchy", checkpoint="tiny-sdxl")
    assert "TI hashes" not in params and spec.embeddings == ()
    assert spec.notes == ("embeddings for another model are not applied: blotchy (embedding for SD1.x (3 vectors))",)


@on_module_loop
async def test_an_embedding_file_changed_behind_the_registry_fails_the_job_in_one_line(
    world: World, tiny_loras: Path
) -> None:
    target = world.models / "embeddings" / "spare.safetensors"
    with_metadata(tiny_loras / "embedding-sd1.safetensors", target, {"copy": "spare"})
    await world.embeddings.add(target)
    shutil.copyfile(tiny_loras / "embedding-sdxl.safetensors", target)  # now an SDXL pair under an SD1 name
    plan = await world.jobs.plan_imagine(
        Asker.host(), Place.command_line(), ImagineOptions.of(prompt="spare parts, spare", checkpoint="tiny-sd1", steps=3)
    )
    [handle] = await world.jobs.start(plan)
    failed = [event async for event in handle.events()][-1]
    assert isinstance(failed, Failed) and "spare" in failed.message and "\n" not in failed.message
    with pytest.raises(EaselError, match="no embedding named"):
        await world.embeddings.get("nothing")


@on_module_loop
async def test_every_hostile_file_in_the_extra_network_folders_is_refused_by_name(tmp_path: Path) -> None:
    """The checkpoint readers' hostile files, again as embeddings (.pt, .safetensors) and LoRAs."""
    from tests.hostile_files import hostile_checkpoints

    models = tmp_path / "models"
    made = hostile_checkpoints(tmp_path / "made")
    expected: dict[str, str] = {}
    for name, (path, reason) in made.items():
        stem, suffix = name.rsplit(".", 1)
        as_embedding = f"{stem}.pt" if suffix in ("ckpt", "pt") else name
        (models / "embeddings").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, models / "embeddings" / as_embedding)
        expected[as_embedding] = reason
        if suffix == "safetensors":
            (models / "Lora").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, models / "Lora" / name)
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        lora_scan = await LoraRegistry(db, models).scan()
        embedding_scan = await EmbeddingRegistry(db, models).scan()
    finally:
        await db.close()
    assert not lora_scan.added and not embedding_scan.added
    refused = dict(embedding_scan.errors)
    assert set(refused) == set(expected)
    for name, reason in expected.items():
        assert reason in refused[name] and "\n" not in refused[name], (name, refused[name])
    assert {n for n, _ in lora_scan.errors} == {n for n in made if n.endswith(".safetensors")}


def test_explain_shows_where_a_word_becomes_vectors() -> None:
    from bot.generation.prompt_explain import explain, render

    reading = explain("a cat, (EasyNegative:1.2), dog", 20, {"EasyNegative": 3})
    lines = render(reading)
    assert "   1.2000  <embedding EasyNegative: 3 vectors>" in lines
    assert reading["schedule"][0]["tokens"] == 8  # a, cat, ",", three vectors, ",", dog: the vectors count
    plain = render(explain("a cat, (EasyNegative:1.2), dog", 20))
    assert not any("<embedding" in line for line in plain)
