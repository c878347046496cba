"""Service overhead: submit -> PNG bytes through queue, pipe and worker, vs the same diffusers call
made directly in-process (also ending in PNG bytes). Target ≤ 1.05×.

python bench/generation_overhead.py [STEPS] [SIZE]   (default 20 steps, 256 px; tiny SD1 checkpoint)
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import checkpoint_ref, median, report, start_service, tiny_checkpoint
from tests.helpers import queue_unchecked


async def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    repeats = 5
    import torch

    from bot.rules.limits import GenerationRequest, Limits
    from gpu_worker.loader import load_pipeline
    from gpu_worker.samplers import make_scheduler

    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_checkpoint(Path(tmp))
        service, db = await start_service(Path(tmp), Limits(max_queued_per_user=100))
        ref = await checkpoint_ref(db, path)
        direct = load_pipeline(ref.load_request(), "cpu")
        pipe = direct.pipeline

        def run_direct(seed: int) -> bytes:
            pipe.scheduler = make_scheduler(direct.base_scheduler_config, "DPM++ 2M", "Karras")
            image = pipe(
                prompt="a lighthouse at dusk",
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=7.0,
                generator=[torch.Generator("cpu").manual_seed(seed)],
            ).images[0]
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()

        async def run_service(seed: int) -> bytes:
            request = GenerationRequest.of(
                prompt="a lighthouse at dusk", requester_id="bench", steps=steps, width=size, height=size, seed=seed
            )
            job = await (await queue_unchecked(service, request, ref)).wait()
            return job.images[0].png

        await run_service(1)  # load the checkpoint into the worker's cache
        run_direct(1)
        times: dict[str, list[float]] = {"service": [], "direct": []}
        for i in range(repeats):
            started = time.perf_counter()
            await run_service(i)
            times["service"].append(time.perf_counter() - started)
            started = time.perf_counter()
            run_direct(i)
            times["direct"].append(time.perf_counter() - started)
        await service.close()
        await db.close()
    report(
        "generation_overhead",
        {
            "steps": steps,
            "size": size,
            "service_median_s": round(median(times["service"]), 3),
            "direct_median_s": round(median(times["direct"]), 3),
            "ratio_service_vs_direct": round(median(times["service"]) / median(times["direct"]), 3),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
