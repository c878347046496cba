"""`python -m gpu_worker generate PATH …`: one batch in this process, printing every event — for
debugging a checkpoint or the worker without the bot.

The worker does not inspect files (that is the bot's job, done on hostile input before anything
loads), so the model's family, bundled config and prediction type are given here; the defaults
are SD1's. `python bot.py generate` is the same run through the bot, with the file inspected."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.families import SUPPORTED_FAMILIES
from common.parameters import Parameters
from common.protocol import JobDone, JobPart, LoadRequest, RunBatch
from common.samplers import parse_sampler


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="run one batch here and print its events")
    p.add_argument("path")
    p.add_argument("--prompt", required=True)
    p.add_argument("--family", choices=SUPPORTED_FAMILIES, default="sd1")
    p.add_argument("--config", default=None, help="bundled config folder (default: the family's)")
    p.add_argument("--prediction", choices=("epsilon", "v"), default="epsilon")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampler", default="Euler")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="worker-debug.png")


def debug_generate(args: argparse.Namespace) -> int:
    from gpu_worker.cache import PipelineCache
    from gpu_worker.loader import load_pipeline
    from gpu_worker.runner import BatchRunner
    from gpu_worker.worker import resolve_device

    try:
        sampler, schedule = parse_sampler(args.sampler)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    path = Path(args.path)
    load = LoadRequest(
        str(path.resolve()),
        path.stem,
        args.family,
        args.family,
        "ckpt" if path.suffix in (".ckpt", ".pt", ".pth") else "safetensors",
        args.config or args.family,
        args.prediction,
    )
    device = resolve_device(args.device)
    cache = PipelineCache(device, 1 << 40, 0, lambda request: load_pipeline(request, device))
    outcome: list[object] = []

    def send(event: object) -> None:
        outcome.append(event)
        shown = {
            k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in vars(event).items() if k != "images"
        }
        print(type(event).__name__, shown, flush=True)

    part = JobPart("debug", args.prompt, "", (args.seed,))
    parameters = Parameters(
        prompt=args.prompt, width=args.size, height=args.size, steps=args.steps, sampler=sampler, schedule=schedule
    )
    batch = RunBatch("debug", load, (part,), parameters, model_name=load.name)
    BatchRunner(device, cache, send, lambda job_id: False).run(batch)
    done = [e for e in outcome if isinstance(e, JobDone)]
    if not done:
        return 1
    Path(args.out).write_bytes(done[0].images[0].png)
    print(f"wrote {args.out}")
    return 0
