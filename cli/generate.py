"""`python bot.py generate …`: one job through the same service and worker the bot uses."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from tqdm import tqdm

from bot.components.registry import vae_registry
from bot.components.text_encoders import text_encoder_registry
from bot.config import Settings
from bot.controlnets.annotators import annotator_registry
from bot.controlnets.clip_vision import clip_vision_registry
from bot.controlnets.registry import controlnet_registry
from bot.db import open_database
from bot.detectors import detector_registry
from bot.generation.jobs import Cancelled, Failed, Finished, Loading, Progress, Queued
from bot.generation.service import GenerationService
from bot.generation.workers import worker_configs
from bot.images.infotext import read_picture_parameters
from bot.jobs import Asker, ControlAsk, ImagineOptions, Jobs, Place
from bot.networks.registry import network_registries
from bot.rules.limits import Limits, parse_size
from bot.rules.network_selection import lora_strength
from bot.rules.policy import readable_score
from bot.styles import StyleBook
from bot.upscalers.registry import upscaler_registry
from bot.upscalers.service import UpscaleService
from cli.checkpoints import open_registry
from common.control import CONTROL_MODES, ControlUnit
from common.errors import EaselError
from common.parameters import RNG_SOURCES, Parameters
from common.protocol import MASKED_CONTENT, hires_size, is_broker_url
from common.worker_config import add_engine_arguments, engine_of


def options_from_args(args: argparse.Namespace) -> ImagineOptions:
    # Every flag named as its field in common/parameters.py is a parameter of the picture (None: not
    # given); a few flags keep A1111's shorter names.
    given = {name: value for name, value in vars(args).items() if name in Parameters.names()}
    given |= {"hires_scale": args.hires or 0.0, "hires_upscaler": args.upscaler}
    return ImagineOptions(
        prompt=args.prompt,
        given=given,
        checkpoint=args.checkpoint,
        size=parse_size(args.size) if args.size else None,
        init_image=_read_input(args.init_image) if args.init_image else None,
        mask=_read_input(args.mask) if args.mask else None,
        styles=tuple(args.style or ()),
        edit_images=tuple(_read_input(path) for path in args.edit or ()),
        control=tuple(_control_ask(value, args) for value in args.control_units or ()),
    )


def _control_ask(value: str, args: argparse.Namespace) -> ControlAsk:
    """--control PICTURE:PREPROCESSOR[:MODEL][:WEIGHT], with --control-start/-end/-mode for every unit."""
    parts = value.split(":")
    if len(parts) < 2 or not all(parts[:2]):
        raise EaselError(f"--control {value}: give PICTURE:PREPROCESSOR[:MODEL][:WEIGHT], e.g. edges.png:canny or pose.png:none:control_v11p_sd15_openpose:0.8")
    picture, module, rest = parts[0], parts[1], parts[2:]
    weight = 1.0
    if rest:
        try:
            weight = float(rest[-1])
            rest = rest[:-1]
        except ValueError:
            pass
    if len(rest) > 1:
        raise EaselError(f"--control {value}: one model name after the preprocessor, then a weight")
    unit = ControlUnit("", module, rest[0] if rest else "", weight, args.control_start, args.control_end, args.control_mode)
    return ControlAsk(_read_input(picture), unit)


def _read_input(path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise EaselError(f"{path}: {e.strerror or e}") from None


async def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    out = Path(args.out)
    if await asyncio.to_thread(lambda: out.exists() and not out.is_dir()):
        raise EaselError(f"--out {out} exists and is not a directory")
    limits = Limits()
    # --broker: through remote workers only (`python -m gpu_worker remote` on any machine).
    devices = [] if args.broker else [args.device] if args.device else settings.devices[:1]
    db = await open_database(settings.database_path)
    service = GenerationService(
        db,
        worker_configs(
            devices,
            settings.cache_device_gb,
            settings.cache_cpu_gb,
            "INFO" if args.verbose else "WARNING",
            **(settings.engine() | engine_of(args)),
        ),
        limits,
        preview_every=0,
        broker_url=args.broker,
        worker_keys=settings.worker_key_table() if args.broker else None,
        share=settings.share_options().for_command_line() if args.broker else None,
    )
    try:
        async with open_registry(settings, need_models_dir=False) as registry:
            upscaling = UpscaleService(upscaler_registry(db, settings))
            jobs = Jobs(
                registry,
                service,
                None,
                *network_registries(db, settings),
                settings.input_store(),
                upscaling,
                vae_registry(db, settings),
                extra_terms=(settings.minor_terms, settings.sexual_terms),
                text_encoders=text_encoder_registry(db, settings),
                styles=StyleBook(db),
                wildcards=settings.wildcards(),
                controlnets=controlnet_registry(db, settings),
                clip_vision=clip_vision_registry(db, settings),
                annotators=annotator_registry(db, settings),
                detectors=detector_registry(db, settings),
            )
            # Every rule and every bad option is checked here, before a worker starts.
            asker = Asker.host(os.environ.get("USER", "cli"))
            if args.from_picture:  # /pnginfo's "Make this here": a picture's own parameters
                info = await asyncio.to_thread(read_picture_parameters, _read_input(args.from_picture))
                plan = await jobs.plan_from_infotext(asker, Place.command_line(), info)
            else:
                if not (args.prompt and (args.checkpoint or args.edit)):
                    raise EaselError("give --checkpoint and --prompt (--edit PICTURE and --prompt for an edit), or --from-picture PICTURE")
                args.rng = args.rng or settings.rng  # the bot's default source (EASEL_RNG) where none was given
                plan = await jobs.plan_imagine(asker, Place.command_line(), options_from_args(args))
        if devices:
            print(f"starting the worker on {devices[0]}…", flush=True)
        else:
            print("waiting for a remote worker on the broker…", flush=True)
        await service.start(ready_within=300.0 if devices else BROKER_WAIT_SECONDS)
        [handle] = await jobs.start(plan)
        bar = tqdm(total=plan.specs[0].denoising_steps, unit="step", desc=f"job {handle.job.id}", disable=None)
        try:
            async for event in handle.events(poll=1.0):
                if isinstance(event, Queued):
                    bar.set_postfix_str(f"queued #{event.position}")
                elif isinstance(event, Loading):
                    bar.set_postfix_str(f"loading {event.checkpoint} ({event.cache})")
                elif isinstance(event, Progress):
                    bar.set_postfix_str(f"{event.it_per_s:.2f} it/s")
                    bar.update(event.step - bar.n)
                elif isinstance(event, Finished):
                    bar.close()
                    write_images(event.job, out)
                elif isinstance(event, Failed):
                    bar.close()
                    raise EaselError(event.message)
                elif isinstance(event, Cancelled):
                    bar.close()
                    raise EaselError(f"job {handle.job.id} was cancelled")
        except asyncio.CancelledError:
            await service.cancel(handle.job.id)
            raise
    finally:
        await service.close()
        await db.close()
    return 0


BROKER_WAIT_SECONDS = 60.0


def broker_url(value: str) -> str:
    if not is_broker_url(value):
        raise argparse.ArgumentTypeError("give a redis://host:port URL (rediss:// for TLS)")
    return value


def write_images(job, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(job.images):
        path = out / f"{job.id}-{index}-{image.seed}.png"
        path.write_bytes(image.png)
        found = ", ".join(f"{label} {score:.2f}" for label, score in image.nsfw_labels.items()) or "nothing found"
        score = readable_score(image.nsfw_score)
        checked = "no readable score" if score is None else f"{score:.2f}: {found}"
        print(f"wrote {path} (picture check {checked})")
    for index, (shown, unit, use) in enumerate(zip(job.maps, job.spec.parameters.control, job.spec.controlnets, strict=False)):
        path = out / f"{job.id}-control-{index}.png"
        path.write_bytes(shown.png)
        print(f"wrote {path} (ControlNet {index}: {unit.module} map for {use.name} [{use.short_hash}] at weight {unit.weight:g})")
    spec = job.spec
    source = f"from a picture at strength {spec.parameters.strength:g}, " if spec.parameters.init_image else ""
    if spec.parameters.edit_images:
        count = len(spec.parameters.edit_images)
        source = f"an edit of {count} picture{'s' if count > 1 else ''} ({', '.join(h[:10] for h in spec.parameters.edit_images)}), "
    if spec.parameters.hires_scale:
        big_w, big_h = hires_size(spec.width, spec.height, spec.parameters.hires_scale)
        source += f"hires fix to {big_w}x{big_h} ({spec.parameters.hires_upscaler}), "
    print(
        f"job {job.id}: {spec.checkpoint.name} [{spec.checkpoint.autov2.upper()}], {spec.width}x{spec.height}, "
        f"{spec.parameters.steps} steps, {spec.parameters.sampler} {spec.parameters.schedule}, CFG {spec.parameters.cfg:g}, {source}"
        f"seed{'s' if len(job.images) > 1 else ''} {', '.join(str(i.seed) for i in job.images)}, "
        f"{job.inference_seconds:.2f} s on {job.device}"
    )
    if spec.vae:
        print(f"VAE: {spec.vae.name} [{spec.vae.sha256[:10]}]")
    if spec.loras:
        print("LoRAs: " + ", ".join(f"{use.name} {lora_strength(use)} [{use.short_hash}]" for use in spec.loras))
    if spec.embeddings:
        print("embeddings: " + ", ".join(f"{use.name} [{use.short_hash}]" for use in spec.embeddings))
    for note in (*spec.notes, *job.said):
        print(f"note: {note}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images with a checkpoint (same service and worker as the bot)")
    p.add_argument("--checkpoint", help="registered name, AutoV2 hash, or a checkpoint file path")
    p.add_argument("--prompt", help="what to draw; with --edit, what to change (the instruction)")
    p.add_argument("--from-picture", help="make a picture's A1111 parameters again here (as /pnginfo's button)")
    p.add_argument("--negative", default="")
    p.add_argument("--steps", type=int, help="default 20 (FLUX.1 schnell: 4)")
    p.add_argument("--cfg", type=float, help="default 7 (Flux: 1, its guidance is distilled; above 1 adds true CFG)")
    p.add_argument("--distilled-cfg", type=float, help="Flux dev's guidance (Forge's Distilled CFG Scale), default 3.5")
    p.add_argument(
        "--cfg-rescale", type=float, default=0.0, help="CFG Rescale φ, 0-1 (0.7 for zero-terminal-SNR models)"
    )
    p.add_argument("--sampler", help='A1111 name, e.g. "Euler a" or "DPM++ 2M Karras" (default DPM++ 2M; Flux: Euler)')
    p.add_argument("--schedule", help="an A1111 schedule type: Karras, Exponential, SGM Uniform, Align Your Steps, … (default: the sampler's own)")
    p.add_argument("--seed", type=int, default=-1, help="-1 for random; the seed used is printed")
    p.add_argument(
        "--regions",
        help='the Regional Prompter: a divide ratio and options, e.g. "1,1" or "1,2;1,1 rows base 0.2"; the prompt '
        "separates the regions with ADDCOL/ADDROW (SD1, SD2, SDXL)",
    )
    p.add_argument("--style", action="append", help="a style by name (`styles list`), merged into the prompts as A1111 does; repeatable")
    p.add_argument(
        "--rng",
        type=str.upper,
        choices=RNG_SOURCES,
        help="where the starting noise comes from, as A1111's RNG source: GPU (A1111's default; computed as "
        "CUDA draws it where there is no CUDA), CPU or NV (default: EASEL_RNG or GPU)",
    )
    p.add_argument("--subseed", type=int, help="A1111's variation seed (-1: random), mixed in at --subseed-strength")
    p.add_argument("--subseed-strength", type=float, help="how much of the variation seed's noise, 0-1")
    p.add_argument("--seed-resize-from", help="WIDTHxHEIGHT: the seed's noise as drawn at that size (A1111's)")
    p.add_argument(
        "--ensd", type=int, help="A1111's eta noise seed delta for ancestral and SDE samplers (NovelAI's: 31337)"
    )
    p.add_argument("--size", help="WIDTHxHEIGHT, multiples of 8 (default: the checkpoint's native size)")
    p.add_argument("--count", type=int, default=1, help="images, with seeds counting up from --seed")
    p.add_argument("--clip-skip", type=int, default=1)
    p.add_argument("--init-image", help="img2img: start from this picture (PNG, JPEG or WebP)")
    p.add_argument("--strength", type=float, default=0.75, help="img2img denoising strength, above 0 up to 1")
    p.add_argument(
        "--resize-mode", choices=("crop", "resize", "fill"), default="crop", help="how the picture meets --size"
    )
    p.add_argument(
        "--edit",
        action="append",
        metavar="PICTURE",
        help="edit this picture as --prompt says (\"make it night\") with an edit model such as FLUX.1 Kontext "
        "(default: the first installed); repeat for up to 3 pictures",
    )
    p.add_argument("--mask", help="inpainting: redraw only where this picture is white (with --init-image)")
    p.add_argument("--mask-blur", type=int, default=4, help="the mask's blur, in pixels (A1111's Mask blur)")
    p.add_argument(
        "--masked-content", choices=MASKED_CONTENT, default="original", help="what the masked part starts from (A1111)"
    )
    p.add_argument(
        "--only-masked", action="store_true", help="A1111's Inpaint area: Only masked (redrawn at full size)"
    )
    p.add_argument("--mask-padding", type=int, default=32, help="with --only-masked: pixels around the mask")
    p.add_argument("--hires", type=float, help="hires fix: a second pass at this size factor (e.g. 2)")
    p.add_argument("--hires-steps", type=int, default=0, help="the second pass's steps (0: as many as the first)")
    p.add_argument("--hires-denoise", type=float, default=0.7, help="the second pass's denoising strength")
    p.add_argument(
        "--upscaler",
        default="Latent",
        help='hires upscaler: "Latent", "Latent (bicubic)", "Lanczos", or an upscaler model (`upscalers list`)',
    )
    p.add_argument(
        "--control",
        action="append",
        dest="control_units",  # not the parameter record's `control`: these are read into it
        metavar="PICTURE:PREPROCESSOR[:MODEL][:WEIGHT]",
        help="a ControlNet unit (SD1, SD2, SDXL): the picture, the preprocessor (canny, scribble_xdog, lineart_standard, "
        "tile_resample, blur_gaussian, shuffle, threshold, invert, none), the model from models/ControlNet (`controlnets "
        "list`; default: the installed one named for the preprocessor) and its weight (default 1); repeat for up to 3",
    )
    p.add_argument("--control-start", type=float, default=0.0, help="ControlNet units act from this share of the steps (0-1)")
    p.add_argument("--control-end", type=float, default=1.0, help="and up to this one (0-1)")
    p.add_argument("--control-mode", choices=CONTROL_MODES, default=CONTROL_MODES[0], help="the A1111 extension's Control Mode")
    p.add_argument(
        "--detail",
        choices=("faces", "hands", "both"),
        help="ADetailer's pass: each face (hand) found is redrawn at full size and pasted back; faces by ADetailer's "
        "face detector in models/adetailer, else the picture check's; hands need its hand_yolov8n.pt",
    )
    p.add_argument("--detail-strength", type=float, help="the detail pass's denoising strength (default 0.4)")
    p.add_argument("--vae", help="a VAE from models/VAE (`vaes list`) in place of the checkpoint's own; none: its own")
    p.add_argument("--device", help="cpu, cuda:N or mps (default: the first configured device)")
    add_engine_arguments(p)  # --precision, --vae-precision, --compile, --cache-threshold (default: the settings')
    p.add_argument(
        "--broker",
        type=broker_url,
        help="run on remote workers through this Redis broker (redis://…, rediss:// for TLS) instead of a local one",
    )
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.set_defaults(handler=cmd_generate)
