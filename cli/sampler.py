"""`python bot.py sampler explain NAME --steps N --checkpoint C [--schedule T] [--denoise X] [--json]`:
the noise levels a sampler steps through on a checkpoint, where it calls the model and at which
timesteps (gpu_worker/sampling/explain.py) — A1111's k-diffusion sigmas, to hold against A1111's."""

from __future__ import annotations

import argparse
import dataclasses
import json

from bot.config import Settings
from bot.generation.checkpoint_ref import resolve_checkpoint
from bot.rules.limits import check_sampler
from bot.worker_tools import run_worker_tool
from cli.checkpoints import open_registry
from common.errors import EaselError
from common.families import FLOW_FAMILIES

MAX_STEPS = 150  # the bot's own ceiling for a job's steps


async def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.steps <= MAX_STEPS:
        raise EaselError(f"--steps must be between 1 and {MAX_STEPS}")
    if args.denoise is not None and not 0 < args.denoise <= 1:
        raise EaselError("--denoise must be above 0 and at most 1")
    async with open_registry(settings, need_models_dir=False) as registry:
        checkpoint = await resolve_checkpoint(registry, args.checkpoint, allow_path=True)
    if checkpoint.family in FLOW_FAMILIES:
        raise EaselError(f"{checkpoint.name} is a flow-matching model: its schedule depends on the picture's size; sampler explain shows SD1, SD2 and SDXL schedules")
    sampler, schedule = check_sampler(args.name, args.schedule, checkpoint)
    load = json.dumps(dataclasses.asdict(checkpoint.load_request()))
    argv = ["sigmas", "--load", load, "--sampler", sampler, "--schedule", schedule, "--steps", str(args.steps)]
    if args.denoise is not None:
        argv += ["--denoise", str(args.denoise)]
    result = json.loads(await run_worker_tool(*argv))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['sampler']}, schedule {result['schedule']}: {result['steps']} steps, {result['model_calls']} model calls ({result['form']})")
    if result.get("sigmas") is not None:
        print("sigmas: " + ", ".join(f"{s:.4f}" for s in result["sigmas"]))
    if "call_sigmas" in result:
        print("model called at sigmas: " + ", ".join(f"{s:.4f}" for s in result["call_sigmas"]))
    print("at timesteps: " + ", ".join(f"{t:.2f}" for t in result["call_timesteps"]))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sampler = sub.add_parser("sampler", help="what a sampler does with a checkpoint's noise schedule")
    ssub = sampler.add_subparsers(dest="sampler_command", required=True)
    p = ssub.add_parser("explain", help="the noise levels (sigmas) of each step, as A1111's samplers use them")
    p.add_argument("name", help='an A1111 sampler name, e.g. "DPM++ 2M" or "DPM++ 2M Karras"')
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--checkpoint", required=True, help="a registered checkpoint, a file path, or the demo model")
    p.add_argument("--schedule", help="an A1111 schedule type (default: the sampler's own)")
    p.add_argument("--denoise", type=float, help="from a picture at this denoising strength (A1111's img2img window)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_explain)
