"""`python -m gpu_worker …`: the worker on its own.

serve --fd N           the bot's worker process (the bot starts it; see bot/generation/workers.py)
remote --broker URL    this machine's GPUs as workers of a bot on another machine, through Redis
generate PATH …        one batch in this process, printing every event: for debugging a checkpoint
                       or the worker without the bot
make-tiny-checkpoint   a tiny random-weight checkpoint for tests and demos
make-tiny-lora         a tiny random-weight LoRA (kohya layout) for those checkpoints
make-tiny-embedding    a tiny random textual-inversion embedding for them
make-tiny-vae          a tiny random-weight VAE file (LDM layout) for those checkpoints
make-tiny-component    a tiny CLIP-L, T5-XXL or Flux VAE file for the tiny transformer-only Flux file
make-tiny-upscaler     a tiny random-weight upscaler (ESRGAN, Real-ESRGAN or compact layout)
safety-check PNG       the picture check's scores for a picture (JSON)
upscale --fd N         enlarge one picture with an upscaler model (the bot's upscale service starts this)
embed                  the catalog's sentence-embedding process (JSON frames on a pipe)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpu_worker.protocol import SUPPORTED_FAMILIES, is_broker_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run as the bot's worker, on the pipe the bot passes as --fd")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--config", default="{}", help="WorkerConfig as JSON")
    p = sub.add_parser("remote", help="serve a bot on another machine through a Redis broker (Streams)")
    p.add_argument(
        "--broker",
        default=None,
        help="redis://[user:password@]host:port[/db] or rediss:// for TLS (default: $EASEL_BROKER)",
    )
    p.add_argument(
        "--models-dir", type=Path, required=True, help="this machine's model files, found by sha256 under any name"
    )
    p.add_argument(
        "--devices", default="auto", help="comma-separated: auto, cpu, cuda:0, cuda:1, mps (one worker each)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=0, help="the largest width × height it takes (0: no limit of its own)"
    )
    p.add_argument("--families", default=",".join(SUPPORTED_FAMILIES), help="the model families it runs")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics here (one port per device, counting up)",
    )
    p.add_argument(
        "--cache-device-gb", type=float, default=None, help="pipeline cache on the device (default: from its memory)"
    )
    p.add_argument("--log-level", default="INFO")
    p = sub.add_parser("generate", help="run one batch here and print its events")
    p.add_argument("path")
    p.add_argument("--prompt", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampler", default="Euler")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="worker-debug.png")
    p = sub.add_parser("bake", help="bake LoRAs into a checkpoint (the bot's merge service starts this)")
    p.add_argument("--fd", type=int, required=True)
    p = sub.add_parser(
        "upscale", help="enlarge a picture with an upscaler model (the bot's upscale service starts this)"
    )
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--device", default="auto")
    p = sub.add_parser("safety-check", help="the picture check's scores for a PNG, as JSON")
    p.add_argument("path")
    p = sub.add_parser("make-tiny-vae")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    p = sub.add_parser("make-tiny-upscaler")
    p.add_argument("--layout", choices=("esrgan", "realesrgan", "compact"), default="esrgan")
    p.add_argument("--scale", type=int, choices=(1, 2, 4, 8), default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    p = sub.add_parser("merge", help="carry out a merge order (the bot's merge service starts this)")
    p.add_argument("--fd", type=int, required=True)
    p = sub.add_parser("embed", help="serve sentence embeddings for the catalog on the pipe the bot passes")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", help="where the ONNX export of the model is kept (default: the temp folder)")
    p = sub.add_parser("make-tiny-checkpoint")
    p.add_argument(
        "--arch",
        choices=(
            "sd1",
            "sd2",
            "sdxl",
            "sdxl-vpred",
            "sdxl-edm",
            "flux",
            "flux-schnell",
            "flux-transformer",
            "flux-schnell-transformer",
            "sd35",
            "sd35-medium",
            "sd35-all-in-one",
        ),
        required=True,
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inpainting", action="store_true", help="a 9-channel UNet, as inpainting models have")
    p.add_argument("--fp8", action="store_true", help="Flux: the transformer's matrices as float8_e4m3fn")
    p.add_argument("out")
    p = sub.add_parser("make-tiny-component")
    p.add_argument(
        "--kind", choices=("clip-l", "t5xxl", "flux-vae", "sd3-clip-l", "sd3-clip-g", "sd3-t5xxl"), required=True
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    p = sub.add_parser("make-tiny-lora")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--locon", action="store_true", help="LyCORIS LoCon: the ResNet convolutions too")
    p.add_argument("out")
    p = sub.add_parser("make-tiny-embedding")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vectors", type=int, default=2)
    p.add_argument("out")
    args = parser.parse_args(argv)

    if args.command == "serve":
        from multiprocessing.connection import Connection

        from gpu_worker.worker import WorkerConfig, serve

        serve(Connection(args.fd), WorkerConfig(**json.loads(args.config)))
        return 0
    if args.command == "remote":
        return _remote(args)
    if args.command == "generate":
        return _debug_generate(args)
    if args.command == "merge":
        return _merge(args.fd)
    if args.command == "bake":
        return _bake(args.fd)
    if args.command == "upscale":
        return _upscale(args.fd, args.device)
    if args.command == "make-tiny-upscaler":
        return _make_tiny_upscaler(args)
    if args.command == "safety-check":
        from PIL import Image

        from gpu_worker.safety import NudityScorer

        with Image.open(args.path, formats=["PNG"]) as picture:
            scores = NudityScorer().score(picture)
        print(json.dumps({"score": scores.score, "labels": scores.labels}))
        return 0
    if args.command == "make-tiny-vae":
        from gpu_worker.tiny import make_tiny_vae

        try:
            out = make_tiny_vae(args.base, Path(args.out), args.seed)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote {out} (tiny {args.base} VAE, seed {args.seed}, {out.stat().st_size / 1e6:.1f} MB)")
        return 0
    if args.command == "embed":
        from gpu_worker.embedder import serve_embeddings

        cache = Path(args.cache_dir) if args.cache_dir else None
        from multiprocessing.connection import Connection

        return serve_embeddings(Connection(args.fd), args.threads, cache)
    if args.command in ("make-tiny-lora", "make-tiny-embedding"):
        return _make_tiny_network(args)
    if args.command == "make-tiny-component" or args.arch.startswith(("flux", "sd35")):
        return _make_tiny_transformer(args)
    from gpu_worker.tiny import make_tiny_checkpoint

    try:
        out = make_tiny_checkpoint(args.arch, Path(args.out), seed=args.seed, inpainting=args.inpainting)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kind = f"{args.arch} inpainting" if args.inpainting else args.arch
    print(f"wrote {out} (tiny {kind}, seed {args.seed}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _remote(args: argparse.Namespace) -> int:
    import os

    from gpu_worker.remote import RemoteOptions, run_devices

    broker = args.broker or os.environ.get("EASEL_BROKER", "")
    if not is_broker_url(broker):
        print("error: give --broker redis://host:port (or rediss:// for TLS), or set EASEL_BROKER", file=sys.stderr)
        return 2
    if not args.models_dir.is_dir():
        print(f"error: --models-dir {args.models_dir} is not a folder", file=sys.stderr)
        return 2
    families = tuple(f for f in args.families.split(",") if f)
    unknown = set(families) - set(SUPPORTED_FAMILIES)
    if unknown or not families:
        print(f"error: --families takes {', '.join(SUPPORTED_FAMILIES)}", file=sys.stderr)
        return 2
    options = RemoteOptions(
        broker=broker,
        models_dir=args.models_dir,
        max_pixels=max(0, args.max_pixels),
        families=families,
        metrics_port=args.metrics_port,
        cache_device_gb=args.cache_device_gb,
        log_level=args.log_level,
    )
    return run_devices(options, [d.strip() for d in args.devices.split(",") if d.strip()])


def _make_tiny_transformer(args: argparse.Namespace) -> int:
    """`--arch flux[-schnell][-transformer]`: all-in-one or transformer only; `--arch sd35…`: SAI's
    shape or all-in-one; or one component for them."""
    from gpu_worker.tiny_flux import make_tiny_component, make_tiny_flux
    from gpu_worker.tiny_sd3 import make_tiny_sd3

    try:
        if args.command == "make-tiny-component":
            out, kind = make_tiny_component(args.kind, Path(args.out), args.seed), args.kind
        elif args.inpainting:
            raise ValueError("there are no Flux or SD3 inpainting checkpoints to imitate")
        elif args.arch.startswith("sd35"):
            if args.fp8:
                raise ValueError("--fp8 is for the tiny Flux files")
            out, kind = make_tiny_sd3(Path(args.out), args.arch, args.seed), args.arch
        else:
            shape = "transformer" if args.arch.endswith("-transformer") else "all-in-one"
            out = make_tiny_flux(Path(args.out), args.seed, shape, schnell="schnell" in args.arch, fp8=args.fp8)
            kind = args.arch + (" fp8" if args.fp8 else "")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (tiny {kind}, seed {args.seed}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _make_tiny_network(args: argparse.Namespace) -> int:
    from gpu_worker.tiny_networks import make_tiny_embedding, make_tiny_lora

    try:
        if args.command == "make-tiny-lora":
            out = make_tiny_lora(args.base, Path(args.out), seed=args.seed, locon=args.locon)
            what = "LoCon" if args.locon else "LoRA"
        else:
            out, what = make_tiny_embedding(args.base, Path(args.out), args.seed, args.vectors), "embedding"
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (tiny {args.base} {what}, seed {args.seed}, {out.stat().st_size / 1e3:.0f} kB)")
    return 0


def _merge(fd: int) -> int:
    """The order comes as one JSON frame on the pipe; progress, a refusal ({"error"}) and the peak
    memory go back as JSON frames; the exit status says whether it worked."""
    from multiprocessing.connection import Connection

    from bot.errors import CheckpointFileError
    from gpu_worker.merge import peak_rss_bytes, run_merge
    from gpu_worker.protocol import MAX_FRAME_BYTES, BadFrame, decode_order

    conn = Connection(fd)

    def send(message: dict) -> None:
        conn.send_bytes(json.dumps(message).encode())

    try:
        run_merge(
            decode_order(conn.recv_bytes(MAX_FRAME_BYTES)), lambda done, total: send({"done": done, "total": total})
        )
    except (BadFrame, CheckpointFileError, OSError, EOFError) as e:
        send({"error": str(e) or type(e).__name__})
        return 1
    send({"peak_rss_bytes": peak_rss_bytes()})
    return 0


def _bake(fd: int) -> int:
    """As _merge, for a BakeOrder."""
    from multiprocessing.connection import Connection

    from gpu_worker.bake import BakeError, run_bake
    from gpu_worker.loader import CheckpointLoadError
    from gpu_worker.loras import LoraError
    from gpu_worker.merge import peak_rss_bytes
    from gpu_worker.protocol import MAX_FRAME_BYTES, BadFrame, BakeOrder, decode_order

    conn = Connection(fd)

    def send(message: dict) -> None:
        conn.send_bytes(json.dumps(message).encode())

    try:
        order = decode_order(conn.recv_bytes(MAX_FRAME_BYTES), BakeOrder)
        run_bake(order, lambda done, total: send({"done": done, "total": total}))
    except (BadFrame, BakeError, CheckpointLoadError, LoraError, OSError, EOFError) as e:
        send({"error": str(e) or type(e).__name__})
        return 1
    send({"peak_rss_bytes": peak_rss_bytes()})
    return 0


def _upscale(fd: int, device_name: str) -> int:
    """As _merge, for an UpscaleOrder: progress is tiles done of the tiles of every pass."""
    from multiprocessing.connection import Connection

    import torch
    from PIL import Image

    from bot.upscalers.detection import UpscalerFileError
    from gpu_worker.merge import peak_rss_bytes
    from gpu_worker.protocol import MAX_FRAME_BYTES, BadFrame, UpscaleOrder, decode_order
    from gpu_worker.render import png_with_texts
    from gpu_worker.safety import NudityScorer
    from gpu_worker.upscale_models import load_upscaler, upscale_picture
    from gpu_worker.worker import resolve_device

    conn = Connection(fd)

    def send(message: dict) -> None:
        conn.send_bytes(json.dumps(message).encode())

    try:
        order = decode_order(conn.recv_bytes(MAX_FRAME_BYTES), UpscaleOrder)
        size = (order.width, order.height)
        with Image.open(order.source, formats=["PNG"]) as source:
            if order.model is None:
                picture = source.convert("RGB").resize(size, getattr(Image.Resampling, order.resample))
            else:
                upscaler = load_upscaler(Path(order.model.path), torch.device(resolve_device(device_name)))
                picture = upscale_picture(
                    upscaler,
                    source.convert("RGB"),
                    size,
                    progress=lambda done, total: send({"done": done, "total": total}),
                )
        scores = NudityScorer().score(picture)  # as every picture a worker makes: checked before it goes
        out, temp = Path(order.out), Path(order.out + ".part")
        temp.write_bytes(png_with_texts(picture, order.texts))
        temp.replace(out)
    except (BadFrame, UpscalerFileError, OSError, EOFError, ValueError) as e:
        send({"error": str(e) or type(e).__name__})
        return 1
    send({"peak_rss_bytes": peak_rss_bytes(), "nsfw_score": scores.score, "nsfw_labels": scores.labels})
    return 0


def _make_tiny_upscaler(args: argparse.Namespace) -> int:
    from gpu_worker.tiny_upscalers import make_tiny_upscaler

    try:
        out = make_tiny_upscaler(Path(args.out), args.layout, args.scale, args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {out} (tiny {args.layout} {args.scale}x upscaler, seed {args.seed}, {out.stat().st_size / 1e3:.0f} kB)"
    )
    return 0


def _debug_generate(args: argparse.Namespace) -> int:
    from bot.checkpoints.inspection import inspect_checkpoint
    from bot.errors import CheckpointFileError
    from bot.generation.samplers import parse_sampler
    from gpu_worker.cache import PipelineCache
    from gpu_worker.loader import load_pipeline
    from gpu_worker.protocol import JobDone, JobPart, LoadRequest, RunBatch
    from gpu_worker.runner import BatchRunner
    from gpu_worker.worker import resolve_device

    try:
        ins = inspect_checkpoint(Path(args.path))
        sampler, schedule = parse_sampler(args.sampler)
    except (CheckpointFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    arch = ins.architecture
    load = LoadRequest(
        str(Path(args.path).resolve()),
        Path(args.path).stem,
        arch.family,
        arch.label,
        ins.format,
        ins.pipeline_config,
        arch.prediction,
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

    batch = RunBatch(
        "debug",
        load,
        (JobPart("debug", args.prompt, "", (args.seed,)),),
        args.size,
        args.size,
        args.steps,
        7.0,
        sampler,
        schedule,
        model_name=load.name,
    )
    BatchRunner(device, cache, send, lambda job_id: False).run(batch)
    done = [e for e in outcome if isinstance(e, JobDone)]
    if not done:
        return 1
    Path(args.out).write_bytes(done[0].images[0].png)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the whole process group: the bot (or the CLI) reports it once;
        # a child that printed its own traceback too only buried that report.
        sys.exit(130)
