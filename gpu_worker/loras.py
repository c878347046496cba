"""LoRAs on a cached pipeline: injected once under their sha256, switched per batch, never reloaded.

diffusers loads kohya and PEFT files alike (`load_lora_weights`, with PEFT); each adapter becomes
extra layers beside the pipeline's own weights, which stay untouched. A batch with LoRAs activates
exactly its set at its strengths (`set_adapters`, text encoders and UNet apart, as A1111's
`<lora:name:te:unet>`); a batch without LoRAs disables them all, and PEFT's layers then compute only
the original layer — so the next job is bit-identical to one on a freshly loaded pipeline.
Adapters stay resident for the next batch that wants them; past MAX_RESIDENT per pipeline the least
recently used go, and their bytes count in the pipeline's entry of the cache's memory budget.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file

from common.protocol import LoraUse
from gpu_worker.loaded import LoadedPipeline

log = logging.getLogger(__name__)

MAX_RESIDENT = 8


class LoraError(Exception):
    """A LoRA cannot be applied; the message says which and why, in one line, for the user."""


class TaintedPipeline(LoraError):
    """A LoRA failed half-way into the pipeline: it must be loaded afresh before its next job."""


def adapter_name(use: LoraUse) -> str:
    return f"lora_{use.sha256[:16]}"


def apply_loras(loaded: LoadedPipeline, loras: tuple[LoraUse, ...]) -> bool:
    """Make `loras` the pipeline's active adapters (none: all off). True when adapters were loaded or
    dropped, so the cache should measure the pipeline again. A LoraError that leaves the pipeline
    in doubt is raised as TaintedPipeline, and the caller must drop the pipeline."""
    pipe = loaded.pipeline
    if not loras:
        if loaded.adapters:
            pipe.disable_lora()
        return False
    wanted = [adapter_name(use) for use in loras]
    changed = False
    for use, name in zip(loras, wanted, strict=True):
        if name in loaded.adapters:
            loaded.adapters.remove(name)
            loaded.adapters.append(name)
            continue
        _load(loaded, use, name)
        changed = True
    for name in [n for n in loaded.adapters if n not in wanted][: max(0, len(loaded.adapters) - MAX_RESIDENT)]:
        pipe.delete_adapters([name])
        loaded.adapters.remove(name)
        changed = True
    present = pipe.get_list_adapters()  # {"unet": [...], "text_encoder": [...], ...}
    weights = [
        {
            # the model's own strength for the denoiser (a UNet, or Flux's and SD3's transformer)
            component: use.unet if component in ("unet", "transformer") else use.te
            for component, names in present.items()
            if name in names
        }
        for use, name in zip(loras, wanted, strict=True)
    ]
    pipe.enable_lora()
    pipe.set_adapters(wanted, weights)
    return changed


def _load(loaded: LoadedPipeline, use: LoraUse, name: str) -> None:
    path = Path(use.path)
    if not path.is_file():
        raise LoraError(f"LoRA {use.name}: the file is no longer on disk; an admin needs to rescan")
    try:
        state = load_file(path)  # safetensors only: the bot vetted the header when it registered the file
    except Exception as e:
        raise LoraError(f"LoRA {use.name} cannot be read: {_first_line(e)}") from None
    try:
        # low_cpu_mem_usage: the adapter layers are made empty and filled from the file, not first
        # initialised at random.
        loaded.pipeline.load_lora_weights(state, adapter_name=name, low_cpu_mem_usage=True)
    except Exception as e:
        log.warning("LoRA %s failed on %s: %s", use.name, loaded.request.name, e)
        raise TaintedPipeline(f"LoRA {use.name} does not fit {loaded.request.name}: {_first_line(e)}") from None
    if not any(name in names for names in loaded.pipeline.get_list_adapters().values()):
        raise LoraError(f"LoRA {use.name} has no layer that matches {loaded.request.name}")
    loaded.adapters.append(name)
    log.info("LoRA %s loaded into %s (%d resident)", use.name, loaded.request.name, len(loaded.adapters))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
