"""How a model sits in device memory: chosen by the budget on the real models' shapes (built on
PyTorch's meta device: sizes without memory), and each placement drawing through the runner."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from bench.gpu_check import random_pipeline
from common.protocol import JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.cache import PipelineCache
from gpu_worker.device_memory import default_budgets
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.loader import load_pipeline
from gpu_worker.placement import FP8, GROUP, OFFLOAD, WHOLE, apply, choose, resident, store_in_fp8
from gpu_worker.runner import BatchRunner
from tests.helpers import tiny_flux_request

GB = 1 << 30


@pytest.fixture(scope="module")
def on_paper() -> dict[str, DiffusionPipeline]:
    """Each family's pipeline at its real size without its memory: bench/gpu_check.py's random
    pipelines, built from the bundled configs on the meta device (which also shows they build)."""
    dtypes = {
        "sd1": torch.float16, "sdxl": torch.float16, "flux": torch.bfloat16, "sd3": torch.bfloat16,
        "z-image": torch.bfloat16, "qwen-image": torch.bfloat16, "flux2-klein": torch.bfloat16,
    }  # fmt: skip
    return {config: random_pipeline(config, dtype, "meta") for config, dtype in dtypes.items()}


def budget_of(card_gb: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """The cache budget a worker takes on an empty card of that size (half a GB kept by the driver)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (card_gb * GB - GB // 2, card_gb * GB))
    return default_budgets("cuda:0")[0]


@pytest.mark.parametrize(
    ("card_gb", "placement"), [(48, WHOLE), (32, OFFLOAD), (24, FP8), (16, FP8), (12, GROUP)]
)
def test_flux_dev_takes_the_first_placement_that_fits_each_card(
    on_paper: dict[str, DiffusionPipeline], card_gb: int, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLUX.1 dev in bf16: a 23.8 GB transformer and a 9.5 GB T5. On a 16 or 24 GB card its weights
    are stored in fp8 (11.9 GB) and each part moved in while it runs; on 12 GB, block by block."""
    budget = budget_of(card_gb, monkeypatch)
    chosen = choose(on_paper["flux"], budget, fp8=True)
    assert chosen == placement
    assert resident(on_paper["flux"], chosen) <= budget


@pytest.mark.parametrize(("card_gb", "placement"), [(12, WHOLE), (8, GROUP)])
def test_sdxl_takes_the_first_placement_that_fits_each_card(
    on_paper: dict[str, DiffusionPipeline], card_gb: int, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SDXL in fp16 (6.9 GB): whole on 12 GB; on 8 GB (4.5 GB of budget after room for activations)
    its 5.1 GB UNet is moved in block by block (SD models are never stored in fp8: it shows)."""
    budget = budget_of(card_gb, monkeypatch)
    assert choose(on_paper["sdxl"], budget, fp8=False) == placement


@pytest.mark.parametrize(("card_gb", "placement"), [(48, WHOLE), (24, OFFLOAD), (16, FP8), (12, GROUP)])
def test_sd35_large_takes_the_first_placement_that_fits_each_card(
    on_paper: dict[str, DiffusionPipeline], card_gb: int, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SD3.5 Large in bf16: a 16.3 GB transformer and a 9.5 GB T5. On 12 GB even the T5 alone is over
    the budget: block by block."""
    budget = budget_of(card_gb, monkeypatch)
    assert choose(on_paper["sd3"], budget, fp8=True) == placement


@pytest.mark.parametrize(("card_gb", "placement"), [(48, OFFLOAD), (32, FP8), (24, FP8), (16, GROUP), (12, GROUP)])
def test_qwen_image_and_its_edit_models_take_the_first_placement_that_fits_each_card(
    on_paper: dict[str, DiffusionPipeline], card_gb: int, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen-Image (and Qwen-Image-Edit, the same shapes) in bf16: a 38.1 GB transformer and a 15.4 GB
    Qwen2.5-VL. Its transformer stored in fp8 (19.0 GB) fits a 24 GB card's budget with each part
    moved in; on 16 GB even that is over: block by block."""
    budget = budget_of(card_gb, monkeypatch)
    chosen = choose(on_paper["qwen-image"], budget, fp8=True)
    assert chosen == placement
    assert resident(on_paper["qwen-image"], chosen) <= budget


@pytest.mark.parametrize(("card_gb", "placement"), [(24, WHOLE), (16, OFFLOAD), (12, FP8)])
def test_z_image_takes_the_first_placement_that_fits_each_card(
    on_paper: dict[str, DiffusionPipeline], card_gb: int, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Z-Image in bf16: an 11.5 GB transformer and a 7.5 GB Qwen3-4B: whole on 24 GB (19.1 GB), each
    part moved in on 16 GB (as its card says: it fits 16 GB cards), fp8 weights on 12 GB."""
    budget = budget_of(card_gb, monkeypatch)
    assert choose(on_paper["z-image"], budget, fp8=True) == placement


@pytest.mark.parametrize(("card_gb", "placement"), [(24, WHOLE), (16, OFFLOAD), (12, OFFLOAD), (8, GROUP)])
def test_flux2_klein_takes_the_first_placement_that_fits_each_card(
    on_paper: dict[str, DiffusionPipeline], card_gb: int, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLUX.2 [klein] 4B in bf16: a 7.2 GB transformer and a 7.5 GB Qwen3-4B: whole on 24 GB (14.9
    GB), each part moved in on 16 and 12 GB; on 8 GB the text encoder alone is over the budget (fp8
    storage of the transformer would not help): block by block. Its edits add the input pictures'
    tokens to the sequence, not weights."""
    budget = budget_of(card_gb, monkeypatch)
    chosen = choose(on_paper["flux2-klein"], budget, fp8=True)
    assert chosen == placement
    assert resident(on_paper["flux2-klein"], chosen) <= budget


@pytest.fixture(scope="module")
def flux_request(tmp_path_factory: pytest.TempPathFactory) -> LoadRequest:
    return tiny_flux_request(tmp_path_factory.mktemp("placement") / "flux-dev.safetensors")


def draw(request: LoadRequest, placement: str) -> np.ndarray:
    """A picture drawn through the runner with the model placed as `placement` (the CPU as the device)."""

    def place(loaded: LoadedPipeline) -> None:
        loaded.placement = placement
        apply(loaded.pipeline, placement, "cpu", loaded.dtype)

    cache = PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu", torch.bfloat16), place)
    events: list[object] = []
    batch = RunBatch.of("b", request, (JobPart("j", "a red fox", "", (5,)),), 64, 64, 3, cfg=1.0, preview_every=1)
    BatchRunner("cpu", cache, events.append, lambda job_id: False).run(batch)
    [done] = [e for e in events if isinstance(e, JobDone)]
    loaded, _ = cache.get(request)
    if placement == FP8:
        blocks = loaded.pipeline.transformer.transformer_blocks
        assert {m.weight.dtype for m in blocks.modules() if isinstance(m, torch.nn.Linear)} == {torch.float8_e4m3fn}
    return np.asarray(Image.open(io.BytesIO(done.images[0].png)).convert("RGB"), dtype=np.float32)


def test_every_placement_draws_the_same_picture(flux_request: LoadRequest) -> None:
    """Offloading moves weights, not numbers: the same picture; fp8 weights round them: close to it
    (mean difference under 3 levels of 255, measured 1-2 on the tiny model)."""
    whole = draw(flux_request, WHOLE)
    assert np.array_equal(draw(flux_request, OFFLOAD), whole)
    assert np.array_equal(draw(flux_request, GROUP), whole)
    assert np.abs(draw(flux_request, FP8) - whole).mean() < 3


def test_fp8_storage_halves_flux_as_the_budget_counted_it() -> None:
    """FLUX.1 dev's transformer in fp8: 11.9 GB, what the choice counted (the layers left as they
    were are a rounding error of it), down from 23.8 GB."""
    flux = random_pipeline("flux", torch.bfloat16, "meta")  # its own: storing in fp8 changes it
    before = sum(p.numel() * p.element_size() for p in flux.transformer.parameters())
    counted = resident(flux, FP8)
    store_in_fp8(flux, torch.bfloat16)
    stored = sum(p.numel() * p.element_size() for p in flux.transformer.parameters())
    assert 23.5e9 < before < 24e9 and stored < 0.51 * before
    assert abs(stored - counted) < 0.01 * counted


def test_a_worker_without_a_budget_keeps_every_model_whole(on_paper: dict[str, DiffusionPipeline]) -> None:
    assert {choose(pipeline, None, fp8=True) for pipeline in on_paper.values()} == {WHOLE}


def test_status_names_how_each_loaded_model_sits_in_memory() -> None:
    from bot.generation.service import WorkerStatus, loaded_names
    from bot.generation.worker_status import describe

    names = loaded_names(("aaa+vae", "bbb"), ("whole", FP8), {"aaa": "sdxl-base", "bbb": "flux-dev"})
    assert names == ["sdxl-base", "flux-dev (fp8 weights + model offload)"]
    _, body = describe(WorkerStatus(0, "cuda:0", "idle", 1, names, 0.0, memory_total=16 * 10**9, memory_free=3 * 10**9))
    assert "flux-dev (fp8 weights + model offload)" in body and "memory: 13.0 GB used, 3.0 GB free of 16.0 GB" in body
