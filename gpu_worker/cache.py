"""LRU of loaded pipelines under a memory budget, with a CPU-RAM second tier for GPU workers.

A pipeline evicted from the device moves to CPU RAM when it fits there, so switching back costs a
copy, not a load from disk (what A1111 does with `sd_checkpoints_keep_in_cpu`). On a CPU worker
the device *is* RAM, so there is one tier.

Pipelines may share modules (Flux checkpoints that take the same T5-XXL and VAE from the component
store, gpu_worker/families/flux.py): memory is counted per module, so a shared part counts once, and
a pipeline that shares a part with another is dropped rather than moved to CPU RAM (moving it would
move the part out from under the other).
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from common.protocol import LoadRequest
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.placement import WHOLE, choose, resident

log = logging.getLogger(__name__)


def module_bytes(pipeline: DiffusionPipeline) -> dict[int, int]:
    """Bytes per module of the pipeline, by the module's identity (shared modules have one)."""
    sizes: dict[int, int] = {}
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            tensors = [*component.parameters(), *component.buffers()]
            sizes[id(component)] = sum(t.numel() * t.element_size() for t in tensors)
    return sizes


def _resident(loaded: LoadedPipeline, budget: int | None = None) -> dict[int, int]:
    """What a pipeline keeps on the device: all of it, or offloaded, the most its placement holds at
    once (gpu_worker/placement.py); `budget`: as it will be once placed under that budget."""
    kind = loaded.placement if budget is None else choose(loaded.pipeline, budget, loaded.fp8_storage)
    if kind != WHOLE:
        return {id(loaded.pipeline): resident(loaded.pipeline, kind)}
    return module_bytes(loaded.pipeline)


def pipeline_bytes(pipeline: DiffusionPipeline) -> int:
    return sum(module_bytes(pipeline).values())


@dataclass
class CacheEntry:
    loaded: LoadedPipeline
    modules: dict[int, int]  # module id -> bytes

    @property
    def nbytes(self) -> int:
        return sum(self.modules.values())


def _parts(entry: CacheEntry) -> set[int]:
    """The pipeline's modules by identity, as counted and as they are now (no sizes: nothing walks
    the parameters of every cached model on each eviction)."""
    now = {id(c) for c in entry.loaded.pipeline.components.values() if isinstance(c, torch.nn.Module)}
    return set(entry.modules) | now


@dataclass
class CacheStats:
    device_hits: int = 0
    cpu_hits: int = 0
    loads: int = 0
    evictions: int = 0


class PipelineCache:
    def __init__(
        self,
        device: str,
        device_budget: int,
        cpu_budget: int,
        load: Callable[[LoadRequest], LoadedPipeline],
        place: Callable[[LoadedPipeline], None] | None = None,
    ) -> None:
        """`load` builds a pipeline; `place` (when given) puts a built one on the device, which the
        cache calls only once it has made room for it. Without `place`, `load` returns it placed."""
        self.device = device
        self.device_budget = device_budget
        self.cpu_budget = 0 if device == "cpu" else cpu_budget
        self._load = load
        self._place = place
        self._device: OrderedDict[str, CacheEntry] = OrderedDict()
        self._cpu: OrderedDict[str, CacheEntry] = OrderedDict()
        self.stats = CacheStats()

    def where(self, key: str) -> str:
        """'device', 'cpu' or 'disk': where a get() for `key` would find it now."""
        return "device" if key in self._device else "cpu" if key in self._cpu else "disk"

    def loaded_keys(self) -> list[str]:
        return list(self._device)

    def placements(self) -> list[str]:
        """How each pipeline of `loaded_keys()` sits in device memory (gpu_worker/placement.py)."""
        return [entry.loaded.placement for entry in self._device.values()]

    def get(self, request: LoadRequest) -> tuple[LoadedPipeline, str]:
        key = request.cache_key
        if key in self._device:
            self._device.move_to_end(key)
            self.stats.device_hits += 1
            return self._device[key].loaded, "device"
        if key in self._cpu:
            entry = self._cpu.pop(key)
            self._make_room(self._added(entry.modules))
            entry.loaded.pipeline.to(self.device)
            entry.loaded.device = self.device
            self._device[key] = entry
            self.stats.cpu_hits += 1
            return entry.loaded, "cpu"
        loaded = self._load(request)
        if self._place is not None:  # room first: near the budget, placing it beside the rest would fail
            resident = _resident(loaded, self.device_budget)
            self._part_from_other_placements(loaded, offloaded=id(loaded.pipeline) in resident)
            self._make_room(self._added(resident))
            self._place(loaded)
        entry = CacheEntry(loaded, _resident(loaded))
        self._make_room(self._added(entry.modules))
        if loaded.offloaded:
            log.info(
                "cache: %s is over the %.1f GB budget; it runs with %s", request.name, self.device_budget / 1e9, loaded.placement
            )
        elif entry.nbytes > self.device_budget:
            log.warning(
                "%s needs %.1f GB, over the %.1f GB cache budget",
                request.name,
                entry.nbytes / 1e9,
                self.device_budget / 1e9,
            )
        self._device[key] = entry
        self.stats.loads += 1
        return loaded, "disk"

    def remeasure(self, key: str) -> None:
        """A device pipeline grew or shrank (LoRA adapters came or went): count it again, and make room."""
        entry = self._device.get(key)
        if entry is None:
            return
        del self._device[key]
        entry.modules = _resident(entry.loaded)
        self._make_room(self._added(entry.modules))
        self._device[key] = entry

    def keep_only(self, key: str) -> int:
        """Every other pipeline off the device (to CPU RAM where it fits, else away): what a job that
        ran out of memory tries before its retry. Returns how many left."""
        others = [k for k in self._device if k != key]
        for other in others:
            self._evict(other)
        if others:
            self._released()
        return len(others)

    def discard(self, key: str) -> None:
        """Forget a pipeline whose state is in doubt; the next job loads it afresh."""
        self._device.pop(key, None)
        self._cpu.pop(key, None)
        gc.collect()

    def _part_from_other_placements(self, loaded: LoadedPipeline, offloaded: bool) -> None:
        """Off the device, every pipeline that shares a part with `loaded` (a Flux T5 from the
        component store) unless both are whole: offloading moves a part between CPU RAM and the
        device as its own pipeline runs, out from under a whole one that expects it in place."""
        mine = {id(c) for c in loaded.pipeline.components.values() if isinstance(c, torch.nn.Module)}
        leaving = [key for key, entry in self._device.items() if (offloaded or entry.loaded.offloaded) and mine & _parts(entry)]
        for key in leaving:
            log.info("cache: %s shares parts with %s, placed otherwise: it leaves", self._device[key].loaded.request.name, loaded.request.name)
            self._evict(key)
        if leaving:
            self._released()

    def _make_room(self, nbytes: int) -> None:
        evicted = False
        while self._device and self._used(self._device) + nbytes > self.device_budget:
            self._evict(next(iter(self._device)))  # the least recently used
            evicted = True
        # Only when something left: a full collection walks every object the process holds (0.1-0.5 s
        # with torch, diffusers and transformers loaded), and most loads evict nothing.
        if evicted:
            self._released()

    def _evict(self, key: str) -> None:
        """One pipeline off the device: to CPU RAM when it fits there and shares no part, else away."""
        entry = self._device.pop(key)
        self.stats.evictions += 1
        # Parts as they are now, not only as loaded: a job's VAE (gpu_worker/vaes.py) is one object
        # put into every pipeline that runs with it.
        mine = _parts(entry)
        shares = any(mine & _parts(other) for other in (*self._device.values(), *self._cpu.values()))
        # an offloaded pipeline already lives in CPU RAM: dropping it frees that too
        if entry.nbytes <= self.cpu_budget and not shares and not entry.loaded.offloaded:
            while self._cpu and self._used(self._cpu) + entry.nbytes > self.cpu_budget:
                self._cpu.popitem(last=False)
            entry.loaded.pipeline.to("cpu")
            entry.loaded.device = "cpu"
            self._cpu[key] = entry
            log.info("cache: %s moved to CPU RAM", entry.loaded.request.name)
        else:
            log.info("cache: %s evicted", entry.loaded.request.name)

    def _released(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _added(self, modules: dict[int, int]) -> int:
        """What a pipeline adds to the device: its modules not already there (shared parts count once)."""
        present = {m for e in self._device.values() for m in e.modules}
        return sum(size for m, size in modules.items() if m not in present)

    def device_bytes(self) -> int:
        return self._used(self._device)

    @staticmethod
    def _used(tier: OrderedDict[str, CacheEntry]) -> int:
        return sum({m: size for e in tier.values() for m, size in e.modules.items()}.values())
