"""Checkpoint merging: exact arithmetic, refusals before any work, atomicity, metadata, and the
merged file loads and generates."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from safetensors.torch import load_file, save_file

from bot.checkpoints.architecture import UNET_IN
from bot.checkpoints.merge_plan import merge_order, plan_merge
from bot.checkpoints.merging import MergeRequest, MergeService
from bot.checkpoints.registry import CheckpointRegistry
from bot.checkpoints.safetensors_header import read_header
from bot.db import open_database
from common.errors import EaselError
from common.protocol import MergeOrder
from gpu_worker.testing.tiny import tiny_state_dict

M = 0.3


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    return {name: tiny_state_dict("sd1", seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}


@pytest_asyncio.fixture
async def service(models: Path, sources) -> AsyncIterator[MergeService]:
    for name, state in sources.items():
        save_file(state, str(models / f"{name}.safetensors"), metadata={"modelspec.title": name})
    db = await open_database(models.parent / "data" / "easel.sqlite3")
    registry = CheckpointRegistry(db, models)
    await registry.scan()
    yield MergeService(registry)
    await db.close()


def output(models: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(models / f"{name}.safetensors")


async def test_weighted_sum_is_exact(service: MergeService, models: Path, sources) -> None:
    entry = await service.merge(MergeRequest("a", "weighted_sum", M, secondary="b", name="ws"))
    merged, a, b = output(models, "ws"), sources["a"], sources["b"]
    assert merged.keys() == a.keys()
    for key in a:
        if "model" in key:
            expected = (1 - M) * a[key].double() + M * b[key].double()
            assert torch.allclose(merged[key].double(), expected, rtol=1e-6, atol=1e-7), key
        else:
            assert torch.equal(merged[key], a[key]), key
    assert entry.training == "merged" and "merged" in entry.tags
    assert [(p["role"], p["name"]) for p in entry.lineage] == [
        ("primary", "a.safetensors"),
        ("secondary", "b.safetensors"),
    ]


async def test_add_difference_is_exact(service: MergeService, models: Path, sources) -> None:
    await service.merge(MergeRequest("a", "add_difference", 0.5, secondary="b", tertiary="c", name="ad"))
    merged, a, b, c = output(models, "ad"), sources["a"], sources["b"], sources["c"]
    key = "model.diffusion_model.out.2.weight"
    expected = a[key].double() + 0.5 * (b[key].double() - c[key].double())
    assert torch.allclose(merged[key].double(), expected, rtol=1e-6, atol=1e-7)
    assert not torch.equal(merged[key], a[key])
    assert torch.equal(merged["betas"], a["betas"])  # keys without "model" are A's, as in A1111


async def test_copy_with_fp16_vae_and_prune(service: MergeService, models: Path, sources) -> None:
    vae = {
        k.removeprefix("first_stage_model."): v for k, v in sources["c"].items() if k.startswith("first_stage_model.")
    }
    save_file(vae, str(models / "other.vae.safetensors"))
    with_ema = dict(sources["a"]) | {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(3)}
    save_file(with_ema, str(models / "ema.safetensors"))
    await service.merge(
        MergeRequest("ema.safetensors", "copy", bake_vae="other.vae.safetensors", fp16=True, prune=True, name="cp")
    )
    merged = output(models, "cp")
    assert not any(k.startswith("model_ema.") for k in merged)
    for key, value in sources["a"].items():
        source = sources["c"][key] if key.startswith("first_stage_model.") else value
        assert merged[key].dtype == torch.float16, key
        assert torch.equal(merged[key], source.half()), key


async def test_inpainting_primary_merges_its_common_channels(service: MergeService, models: Path, sources) -> None:
    a = dict(sources["a"])
    a[UNET_IN] = torch.randn(32, 9, 3, 3)
    save_file(a, str(models / "inpaint.safetensors"))
    await service.merge(MergeRequest("inpaint.safetensors", "weighted_sum", M, secondary="b", name="inp"))
    merged = output(models, "inp")[UNET_IN]
    assert torch.allclose(merged[:, :4], (1 - M) * a[UNET_IN][:, :4] + M * sources["b"][UNET_IN], rtol=1e-6, atol=1e-7)
    assert torch.equal(merged[:, 4:], a[UNET_IN][:, 4:])
    with pytest.raises(EaselError, match="the inpainting model must be the primary"):
        await service.merge(MergeRequest("b", "weighted_sum", M, secondary="inpaint.safetensors", name="backwards"))
    recipe = json.loads(load_file_metadata(models / "inp.safetensors")["sd_merge_recipe"])
    assert recipe["is_inpainting"] is True


def load_file_metadata(path: Path) -> dict[str, str]:
    from bot.checkpoints.safetensors_header import read_header

    return read_header(path).metadata


async def test_metadata_round_trip_and_nested_lineage(service: MergeService, models: Path) -> None:
    first = await service.merge(MergeRequest("a", "weighted_sum", M, secondary="b", name="first"))
    second = await service.merge(MergeRequest("first", "weighted_sum", 0.5, secondary="c", name="second"))
    meta = load_file_metadata(models / "second.safetensors")
    recipe, parents = json.loads(meta["sd_merge_recipe"]), json.loads(meta["sd_merge_models"])
    assert (
        recipe["primary_model_hash"] == first.sha256
        and recipe["interp_method"] == "Weighted sum"
        and recipe["multiplier"] == 0.5
    )
    a = await service.registry.get("a")
    assert parents[first.sha256]["sd_merge_recipe"]["secondary_model_hash"] == (await service.registry.get("b")).sha256
    assert parents[a.sha256]["name"] == "a.safetensors"  # grandparents come along, as in A1111
    assert [p["autov2"] for p in second.lineage] == [first.autov2, (await service.registry.get("c")).autov2]


@pytest.mark.parametrize(
    "request_,message",
    [
        (MergeRequest("a", "weighted_sum", M), "needs a secondary model"),
        (MergeRequest("a", "add_difference", M, secondary="b"), "needs a tertiary model"),
        (MergeRequest("a", "weighted_sum", M, secondary="b", tertiary="c"), "only used by add_difference"),
        (MergeRequest("a", "weighted_sum", 1.5, secondary="b"), "multiplier must be between 0 and 1"),
        (MergeRequest("a", "average", M, secondary="b"), "unknown merge method"),
        (MergeRequest("a", "weighted_sum", M, secondary="nope"), "secondary model 'nope': no checkpoint"),
        (MergeRequest("a", "weighted_sum", M, secondary="xl.safetensors"), "SD1.x but xl.safetensors is SDXL base"),
        (
            MergeRequest("a", "weighted_sum", M, secondary="odd.safetensors"),
            "shape mismatch at 'model.diffusion_model.out.2.weight'",
        ),
        (MergeRequest("a", "weighted_sum", M, secondary="old.ckpt"), "convert it first"),
        (MergeRequest("a", "weighted_sum", M, secondary="b", name="c"), "name 'c' is already taken"),
        (
            MergeRequest("a", "copy", bake_vae="wrong.safetensors"),
            r"VAE tensor 'first_stage_model.decoder.conv_in.weight' is \[1\]",
        ),
    ],
)
async def test_refusals_change_nothing(
    service: MergeService, models: Path, sources, tiny_dir: Path, request_, message
) -> None:
    import shutil

    shutil.copy(tiny_dir / "tiny-sdxl.safetensors", models / "xl.safetensors")
    odd = dict(sources["b"])
    odd["model.diffusion_model.out.2.weight"] = torch.zeros(4, 16, 3, 3)
    save_file(odd, str(models / "odd.safetensors"))
    torch.save({"state_dict": sources["b"]}, models / "old.ckpt")
    save_file({"decoder.conv_in.weight": torch.zeros(1)}, str(models / "wrong.safetensors"))
    before = sorted(os.listdir(models))
    registered = [e.name for e in await service.registry.list()]
    with pytest.raises(EaselError, match=message):
        await service.merge(request_)
    assert sorted(os.listdir(models)) == before
    assert [e.name for e in await service.registry.list()] == registered


async def test_cancel_mid_merge_leaves_nothing(service: MergeService, models: Path) -> None:
    before = sorted(os.listdir(models))
    task: asyncio.Task | None = None

    def progress(done: int, total: int) -> None:
        if done >= 5 and task is not None:
            task.cancel()

    task = asyncio.create_task(
        service.merge(MergeRequest("a", "weighted_sum", M, secondary="b", name="gone"), progress)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(os.listdir(models)) == before  # no output, no .part file
    assert await service.registry.find("gone") is None


async def test_killed_merge_process_leaves_nothing(service: MergeService, models: Path) -> None:
    before = sorted(os.listdir(models))
    killed = False

    def progress(done: int, total: int) -> None:
        nonlocal killed
        if done >= 5 and not killed:
            killed = True
            assert service.running_pid is not None
            os.kill(service.running_pid, signal.SIGKILL)  # the process this merge started, by its pid

    with pytest.raises(EaselError, match="exit code -9"):
        await service.merge(MergeRequest("a", "weighted_sum", M, secondary="b", name="killed"), progress)
    assert killed
    assert sorted(os.listdir(models)) == before
    assert await service.registry.find("killed") is None


async def test_merged_checkpoint_loads_and_generates(service: MergeService, models: Path) -> None:
    from common.protocol import LoadRequest
    from gpu_worker.loader import load_pipeline

    entry = await service.merge(MergeRequest("a", "weighted_sum", 0.5, secondary="b", name="gen"))
    assert entry.runnable and entry.architecture == "SD1.x"
    request = LoadRequest(
        str(entry.path), entry.name, entry.family, entry.architecture, entry.format, entry.pipeline_config
    )
    pipe = load_pipeline(request).pipeline
    image = pipe(
        "a cat", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)


def test_inspect_shows_lineage(cli, models: Path, tiny_dir: Path) -> None:
    import shutil

    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "x.safetensors")
    shutil.copy(tiny_dir / "tiny-sd2.safetensors", models / "y.safetensors")
    result = cli("merge", "--primary", "x.safetensors", "--method", "copy", "--fp16", "--name", "x16")
    assert result.code == 0, result.err
    shown = cli("inspect", str(models / "x16.safetensors"))
    assert "merge recipe (A1111)" in shown.out and "parent: x.safetensors" in shown.out
    refused = cli("merge", "--primary", "x.safetensors", "--secondary", "y.safetensors", "--method", "weighted_sum")
    assert refused.code == 1 and "different architectures" in refused.err


@pytest.mark.parametrize("method", ["weighted_sum", "add_difference"])
def test_chunking_does_not_change_a_byte(models: Path, sources, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    from gpu_worker import merge

    for name, state in sources.items():
        save_file(state, str(models / f"{name}.safetensors"))
    paths = {"a": models / "a.safetensors", "b": models / "b.safetensors"}
    if method == "add_difference":
        paths["c"] = models / "c.safetensors"
    headers = {role: read_header(path) for role, path in paths.items()}
    plan = plan_merge(method, M, headers["a"], headers["b"], headers.get("c"), fp16=True)

    def order(out: str) -> MergeOrder:
        return merge_order(plan, headers, paths, out=models / out, temp=models / f".{out}.part", metadata={})

    merge.run_merge(order("whole.safetensors"))
    monkeypatch.setattr(merge, "CHUNK_ELEMENTS", 777)  # many chunks per tensor, none aligned to a row
    merge.run_merge(order("chunked.safetensors"))
    assert (models / "whole.safetensors").read_bytes() == (models / "chunked.safetensors").read_bytes()
