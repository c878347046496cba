"""Pipeline cache: hits, misses, LRU eviction under a budget, and the CPU-RAM second tier."""

from __future__ import annotations

import pytest
import torch

from common.protocol import LoadRequest
from gpu_worker.cache import PipelineCache
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.placement import OFFLOAD, WHOLE

MB = 1 << 20


class FakePipeline:
    """Holds `size` bytes of parameters and records where it is moved."""

    def __init__(self, size: int) -> None:
        self.components = {"unet": torch.nn.Linear(size // 4, 1, bias=False)}
        self.moves: list[str] = []

    def to(self, device: str) -> FakePipeline:
        self.moves.append(device)
        return self


def make_cache(device: str, device_mb: int, cpu_mb: int) -> tuple[PipelineCache, list[str]]:
    loads: list[str] = []

    def load(request: LoadRequest) -> LoadedPipeline:
        loads.append(request.name)
        return LoadedPipeline(FakePipeline(4 * MB), request, device, torch.float32, 0.0)  # type: ignore[arg-type]

    return PipelineCache(device, device_mb * MB, cpu_mb * MB, load), loads


def req(name: str) -> LoadRequest:
    return LoadRequest(f"/{name}.safetensors", name, "sd1", "SD1.x", "safetensors", "sd1", sha256=name * 8)


def test_hit_miss_and_lru_eviction_on_a_cpu_worker() -> None:
    cache, loads = make_cache("cpu", device_mb=9, cpu_mb=100)  # room for two 4 MB pipelines
    assert cache.get(req("a"))[1] == "disk"
    assert cache.get(req("a"))[1] == "device"
    cache.get(req("b"))
    cache.get(req("a"))  # a is now most recent
    assert cache.get(req("c"))[1] == "disk"  # evicts b, the least recently used
    assert cache.loaded_keys() == [req("a").cache_key, req("c").cache_key]
    assert cache.where(req("b").cache_key) == "disk"  # a CPU worker has no second tier
    assert cache.get(req("b"))[1] == "disk"
    assert loads == ["a", "b", "c", "b"]
    assert (cache.stats.loads, cache.stats.device_hits, cache.stats.evictions) == (4, 2, 2)


def test_gpu_worker_keeps_evicted_pipelines_in_cpu_ram() -> None:
    cache, loads = make_cache("cuda:0", device_mb=5, cpu_mb=9)  # one on the device, two in RAM
    a, _ = cache.get(req("a"))
    cache.get(req("b"))
    assert cache.where(req("a").cache_key) == "cpu" and a.pipeline.moves[-1] == "cpu"
    again, source = cache.get(req("a"))
    assert source == "cpu" and again.pipeline.moves[-1] == "cuda:0"  # a copy back, not a load
    assert loads == ["a", "b"]
    cache.get(req("c"))
    cache.get(req("d"))  # RAM tier holds two: the oldest there (b) is dropped
    assert cache.where(req("b").cache_key) == "disk"
    assert cache.stats.cpu_hits == 1


def test_room_is_made_before_a_new_pipeline_goes_on_the_device() -> None:
    """Near the budget a new model is placed only after the old one left the device: placing it
    beside the rest first would run the card out of memory (a GPU worker builds in CPU RAM, then places)."""
    on_device_when_placed: list[list[str]] = []
    cache: PipelineCache

    def build(request: LoadRequest) -> LoadedPipeline:
        return LoadedPipeline(FakePipeline(4 * MB), request, "cpu", torch.float32, 0.0)  # type: ignore[arg-type]

    def place(loaded: LoadedPipeline) -> None:
        on_device_when_placed.append([key[:1] for key in cache.loaded_keys()])
        loaded.pipeline.to("cuda:0")
        loaded.device = "cuda:0"

    cache = PipelineCache("cuda:0", 5 * MB, 9 * MB, build, place)  # one 4 MB pipeline fits on the device
    cache.get(req("a"))
    cache.get(req("b"))
    assert on_device_when_placed == [[], []]  # b was placed after a had gone to CPU RAM
    assert cache.where(req("a").cache_key) == "cpu" and cache.loaded_keys() == [req("b").cache_key]


def test_a_pipeline_over_the_budget_is_counted_as_offloaded_before_it_is_placed() -> None:
    """Offloaded, a pipeline keeps one part at a time on the device: room is made for that part only,
    so what else is there stays."""
    cache: PipelineCache
    kept: list[list[str]] = []

    def build(request: LoadRequest) -> LoadedPipeline:
        pipeline = FakePipeline(2 * MB)
        if request.name == "big":  # 20 MB in two 10 MB parts, over the 16 MB budget
            pipeline.components = {
                "unet": torch.nn.Linear(10 * MB // 4, 1, bias=False),
                "text_encoder": torch.nn.Linear(10 * MB // 4, 1, bias=False),
            }
        return LoadedPipeline(pipeline, request, "cpu", torch.float32, 0.0)  # type: ignore[arg-type]

    def place(loaded: LoadedPipeline) -> None:
        kept.append([key[:1] for key in cache.loaded_keys()])
        loaded.placement = OFFLOAD if loaded.request.name == "big" else WHOLE

    cache = PipelineCache("cuda:0", 16 * MB, 0, build, place)
    cache.get(req("a"))
    cache.get(req("big"))
    assert kept == [[], ["a"]]  # a (2 MB) and one 10 MB part at a time fit in 16 MB: a stayed
    assert cache.loaded_keys() == [req("a").cache_key, req("big").cache_key]


@pytest.mark.parametrize(("big_mb", "a_stays"), [(10, True), (20, False)])
def test_a_part_shared_by_a_whole_and_an_offloaded_model_leaves_with_the_whole_one(big_mb: int, a_stays: bool) -> None:
    """Two Flux checkpoints with the component store's one T5: both whole, they share it on the
    device; once one is offloaded (it moves the T5 between RAM and the device as it runs), the whole
    one leaves first rather than find its T5 gone."""
    shared = torch.nn.Linear(2 * MB // 4, 1, bias=False)  # 2 MB, in both

    def build(request: LoadRequest) -> LoadedPipeline:
        pipeline = FakePipeline(4 * MB)
        if request.name == "big":  # in parts of 10 MB at most: offloaded, one part at a time fits beside a
            pipeline.components = {f"part{i}": torch.nn.Linear(10 * MB // 4, 1, bias=False) for i in range(big_mb // 10)}
        pipeline.components["text_encoder_2"] = shared
        return LoadedPipeline(pipeline, request, "cpu", torch.float32, 0.0)  # type: ignore[arg-type]

    def place(loaded: LoadedPipeline) -> None:
        loaded.placement = WHOLE if sum(p.numel() * 4 for c in loaded.pipeline.components.values() for p in c.parameters()) <= 16 * MB else OFFLOAD

    cache = PipelineCache("cuda:0", 16 * MB, 0, build, place)
    cache.get(req("a"))
    cache.get(req("big"))
    assert (req("a").cache_key in cache.loaded_keys()) is a_stays
    assert cache.where(req("a").cache_key) == ("device" if a_stays else "disk")  # shared: dropped, not kept in RAM


def test_keep_only_moves_every_other_model_off_the_device() -> None:
    """What a job that ran out of memory does before its retry: the others go to CPU RAM (or away)."""
    cache, _ = make_cache("cuda:0", device_mb=13, cpu_mb=5)  # three on the device, one in RAM
    for name in ("a", "b", "c"):
        cache.get(req(name))
    assert cache.keep_only(req("b").cache_key) == 2
    assert cache.loaded_keys() == [req("b").cache_key]
    assert {cache.where(req(n).cache_key) for n in ("a", "c")} == {"cpu", "disk"}  # RAM held one of them
    assert cache.keep_only(req("b").cache_key) == 0


def test_a_gpu_workers_budget_comes_from_the_memory_free_when_it_starts(monkeypatch) -> None:
    """A card another program already half fills gets a budget from what is left, not from its size."""
    import psutil

    from gpu_worker.device_memory import default_budgets

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 24 * gib))  # 14 GiB in use
    monkeypatch.setattr(
        psutil, "virtual_memory", lambda: type("Memory", (), {"available": 64 * gib, "total": 128 * gib})
    )
    assert default_budgets("cuda:0") == (7 * gib, int(64 * gib * 0.4))  # 10 GiB free less room for activations
    assert default_budgets("cpu") == (32 * gib, 0)


def test_a_part_two_pipelines_took_up_later_is_never_moved_from_under_one() -> None:
    """A job's VAE is one object in every pipeline that ran with it: the pipeline that leaves the
    device is dropped, not moved to CPU RAM with the VAE the other still uses there."""
    cache, _ = make_cache("cuda:0", device_mb=9, cpu_mb=100)  # two 4 MB pipelines on the device
    a, _ = cache.get(req("a"))
    b, _ = cache.get(req("b"))
    shared_vae = torch.nn.Linear(4, 1, bias=False)
    a.pipeline.components["vae"] = b.pipeline.components["vae"] = shared_vae  # as VaeCache.apply does
    cache.get(req("c"))  # room for c: a, the oldest, leaves the device
    assert cache.where(req("a").cache_key) == "disk" and "cpu" not in a.pipeline.moves
    assert cache.where(req("b").cache_key) == "device"
