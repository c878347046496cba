"""Pipeline cache: hits, misses, LRU eviction under a budget, and the CPU-RAM second tier."""

from __future__ import annotations

import torch

from common.protocol import LoadRequest
from gpu_worker.cache import PipelineCache
from gpu_worker.loaded import LoadedPipeline

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
