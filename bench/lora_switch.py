"""LoRA costs on a full-size SD1.5 pipeline held in the worker's cache, each against a baseline
measured in the same run:

- switching LoRA sets on the cached pipeline (a new LoRA read and injected; a resident set switched;
  all LoRAs off) against loading the checkpoint from disk (page cache warm: the cheapest load, so the
  ratio is the least flattering one);
- a generation with two LoRAs against the same generation without any.

Random fp16 weights in the real layouts: an SD1.5 single file (~2 GB) and kohya LoRAs of rank 32 on
every attention and MLP layer of the UNet and text encoder (~75 MB each, like a typical Civitai LoRA).
python bench/lora_switch.py   (writes bench/results/lora_switch-DATE.json)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from safetensors.torch import save_file

from bench.harness import median, report
from bench.load_single_file import write_full_size_sd1
from common.protocol import LoadRequest, LoraUse
from gpu_worker.loader import load_pipeline
from gpu_worker.loras import apply_loras
from gpu_worker.testing.tiny_networks import lora_state_dict

REPEATS = 3
SIZE, STEPS = 256, 4  # a short job on a CPU; the ratio is what matters


def main() -> None:
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "sd15.safetensors"
        write_full_size_sd1(checkpoint)
        request = LoadRequest(str(checkpoint), "sd15", "sd1", "SD1.x", "safetensors", "sd1", "epsilon", "c" * 64)
        loaded = load_pipeline(request, device, dtype)
        loras = []
        for n in range(REPEATS * 2 + 2):
            path = Path(tmp) / f"lora-{n}.safetensors"
            save_file(lora_state_dict(loaded.pipeline.components, "sd1", seed=n, rank=32, strength=0.02), str(path))
            sha = f"{n + 1:016x}" * 4  # the worker keeps adapters under their sha256: each one its own
            loras.append(LoraUse(f"l{n}", str(path), sha, sha[:12], 0.8, 0.8))
        lora_mb = Path(loras[0].path).stat().st_size / 1e6

        times: dict[str, list[float]] = {"load": [], "new": [], "switch": [], "off": [], "plain": [], "two": []}

        def timed(key: str, fn) -> None:
            started = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - started)

        def generate() -> None:
            loaded.pipeline(
                prompt="a lighthouse",
                width=SIZE,
                height=SIZE,
                num_inference_steps=STEPS,
                generator=torch.Generator("cpu").manual_seed(1),
            )

        pair = (loras[0], loras[1])
        apply_loras(loaded, pair)  # resident from here on
        for round_ in range(REPEATS):
            timed("load", lambda: load_pipeline(request, device, dtype))
            fresh = (loras[2 + 2 * round_], loras[3 + 2 * round_])
            timed("new", lambda fresh=fresh: apply_loras(loaded, fresh))  # two LoRAs never seen before
            timed("switch", lambda: apply_loras(loaded, pair))  # back to a resident set
            timed("off", lambda: apply_loras(loaded, ()))
            timed("plain", generate)
            apply_loras(loaded, pair)
            timed("two", generate)
            apply_loras(loaded, ())
    load = median(times["load"])
    figures: dict[str, object] = {
        "device": device,
        "lora_file_mb": round(lora_mb, 1),
        "checkpoint_load_s": round(load, 3),
        "two_new_loras_s": round(median(times["new"]), 3),
        "switch_resident_set_s": round(median(times["switch"]), 4),
        "all_off_s": round(median(times["off"]), 4),
        "ratio_two_new_loras_vs_load": round(median(times["new"]) / load, 3),
        "ratio_switch_resident_vs_load": round(median(times["switch"]) / load, 4),
        "job": f"{SIZE}x{SIZE}, {STEPS} steps",
        "job_without_loras_s": round(median(times["plain"]), 3),
        "job_with_two_loras_s": round(median(times["two"]), 3),
        "ratio_two_loras_vs_none": round(median(times["two"]) / median(times["plain"]), 3),
    }
    report("lora_switch", figures)


if __name__ == "__main__":
    main()
