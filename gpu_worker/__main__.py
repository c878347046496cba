"""`python -m gpu_worker …`: the worker on its own.

serve --fd N           the bot's worker process (the bot starts it; see bot/generation/workers.py)
remote --broker URL    this machine's GPUs as workers of a bot on another machine, through Redis
make-tiny-checkpoint   a tiny random-weight checkpoint for tests and demos
make-tiny-lora         a tiny random-weight LoRA (kohya layout) for those checkpoints
make-tiny-embedding    a tiny random textual-inversion embedding for them
make-tiny-vae          a tiny random-weight VAE file (LDM layout) for those checkpoints
make-tiny-component    a tiny CLIP-L, T5-XXL or Flux VAE file for the tiny transformer-only Flux file
make-tiny-upscaler     a tiny random-weight upscaler (ESRGAN, Real-ESRGAN or compact layout)
safety-check PNG       the picture check's scores for a picture (JSON)
upscale --fd N         enlarge one picture with an upscaler model (the bot's upscale service starts this)
embed                  the catalog's sentence-embedding process (JSON frames on a pipe)
preload --fd N         imports once, then forks the children the bot asks for (gpu_worker/preload.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from common.families import SUPPORTED_FAMILIES
from common.protocol import is_broker_url
from common.worker_config import add_engine_arguments, engine_of

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    from gpu_worker.debug_run import add_command, debug_generate
    from gpu_worker.testing.commands import add_commands

    parser = argparse.ArgumentParser(prog="python -m gpu_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = _add_service_commands(sub)
    add_command(sub)
    handlers["generate"] = debug_generate
    handlers.update(add_commands(sub))
    args = parser.parse_args(argv)
    return handlers[args.command](args)


def _add_service_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """The commands the bot (or an operator, for `remote`) starts; the function that runs each."""
    p = sub.add_parser("serve", help="run as the bot's worker, on the pipe the bot passes as --fd")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--config", default="{}", help="WorkerConfig as JSON")
    _add_remote_arguments(
        sub.add_parser("remote", help="serve a bot on another machine through a Redis broker (Streams)")
    )
    p = sub.add_parser("bake", help="bake LoRAs into a checkpoint (the bot's merge service starts this)")
    p.add_argument("--fd", type=int, required=True)
    p = sub.add_parser(
        "upscale", help="enlarge a picture with an upscaler model (the bot's upscale service starts this)"
    )
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--device", default="auto")
    p = sub.add_parser("safety-check", help="the picture check's scores for a PNG, as JSON")
    p.add_argument("path")
    p = sub.add_parser("noise", help="the starting noise of pictures, as JSON (`python bot.py noise` checks the flags)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--shape", required=True, help="CxHxW")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--rng", default="GPU")
    p.add_argument("--subseed", type=int, default=-1)
    p.add_argument("--subseed-strength", type=float, default=0.0)
    p.add_argument("--seed-resize-from", default="")
    p.add_argument("--device", default="auto")
    p = sub.add_parser("sigmas", help="a sampler's noise levels on a checkpoint, as JSON (`python bot.py sampler explain`)")
    p.add_argument("--load", required=True, help="the checkpoint's load request, as JSON")
    p.add_argument("--sampler", required=True)
    p.add_argument("--schedule", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--denoise", type=float, default=None)
    p = sub.add_parser("merge", help="carry out a merge order (the bot's merge service starts this)")
    p.add_argument("--fd", type=int, required=True)
    p = sub.add_parser("preload", help="import once, then start the bot's child processes by forking (bot/preloaded.py)")
    p.add_argument("--fd", type=int, required=True)
    p = sub.add_parser("embed", help="serve sentence embeddings for the catalog on the pipe the bot passes")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", help="where the ONNX export of the model is kept (default: the temp folder)")
    return {
        "serve": _serve,
        "remote": _remote,
        "bake": lambda args: _bake(args.fd),
        "upscale": lambda args: _upscale(args.fd, args.device),
        "safety-check": _safety_check,
        "noise": _noise,
        "sigmas": _sigmas,
        "merge": lambda args: _merge(args.fd),
        "embed": _embed,
        "preload": _preload,
    }


def _add_remote_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="sign its frames and take only signed commands: one line, NAME KEY, as in the bot's EASEL_WORKER_KEYS",
    )
    p.add_argument(
        "--fetch-missing",
        action="store_true",
        help="fetch, by sha256, the files a batch names and this machine lacks (from the bot's share or "
        "object store, as the batch says) into MODELS/fetched",
    )
    p.add_argument(
        "--fetch-budget-gb",
        type=float,
        default=100.0,
        help="disk for fetched files; the least recently used go to make room (default 100)",
    )
    p.add_argument("--log-level", default="INFO")
    add_engine_arguments(p, os.environ)  # --precision, --vae-precision, --compile, --cache-threshold


def _preload(args: argparse.Namespace) -> int:
    from gpu_worker.preload import ChildStart, serve

    started = serve(args.fd)
    if not isinstance(started, ChildStart):
        return started
    code = main(started.argv)  # a child runs its command
    # and ends without Python's finalisation: tearing down what the preloader imported (torch,
    # diffusers, transformers, ONNX Runtime) took 1-2 s of every worker's stop and every tool's end.
    # Its command has closed what it wrote; what is buffered for its streams and log goes out first.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(args: argparse.Namespace) -> int:
    from multiprocessing.connection import Connection

    from common.worker_config import WorkerConfig
    from gpu_worker.worker import serve

    serve(Connection(args.fd), WorkerConfig(**json.loads(args.config)))
    return 0


def _safety_check(args: argparse.Namespace) -> int:
    from PIL import Image

    from gpu_worker.safety import NudityScorer

    with Image.open(args.path, formats=["PNG"]) as picture:
        scores = NudityScorer().score(picture)
    print(json.dumps({"score": scores.score, "labels": scores.labels}))
    return 0


def _noise(args: argparse.Namespace) -> int:
    from gpu_worker.noise import initial_noise
    from gpu_worker.worker import resolve_device

    device = resolve_device(args.device)
    shape = tuple(int(n) for n in args.shape.split("x"))
    seeds = [(args.seed + i) % 2**32 for i in range(args.count)]
    subseeds = [(args.subseed + i) % 2**32 for i in range(args.count)] if args.subseed_strength else None
    resize = tuple(int(n) for n in args.seed_resize_from.split("x")) if args.seed_resize_from else None
    noise, _ = initial_noise(args.rng, device, shape, seeds, subseeds, args.subseed_strength, resize)  # type: ignore[arg-type]
    print(json.dumps({"rng": args.rng, "device": device, "seeds": seeds, "noise": noise.tolist()}))
    return 0


def _sigmas(args: argparse.Namespace) -> int:
    from common.protocol import LoadRequest
    from gpu_worker.loaded import CheckpointLoadError
    from gpu_worker.sampling.explain import explain

    values = json.loads(args.load)
    request = LoadRequest(**{key: value for key, value in values.items() if key != "components"})
    try:
        print(json.dumps(explain(request, args.sampler, args.schedule, args.steps, args.denoise)))
    except (ValueError, OSError, CheckpointLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _embed(args: argparse.Namespace) -> int:
    from multiprocessing.connection import Connection

    from gpu_worker.embedder import serve_embeddings

    cache = Path(args.cache_dir) if args.cache_dir else None
    return serve_embeddings(Connection(args.fd), args.threads, cache)


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
    if args.fetch_budget_gb <= 0:
        print("error: --fetch-budget-gb takes a size in GB above 0", file=sys.stderr)
        return 2
    if args.fetch_missing and not os.access(args.models_dir, os.W_OK | os.X_OK):
        print(f"error: --fetch-missing writes into --models-dir {args.models_dir}, which is not writable", file=sys.stderr)
        return 2
    key = None
    if args.key_file is not None:
        from common.errors import ConfigError
        from common.frame_signing import read_key_file

        try:
            key = read_key_file(args.key_file)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    options = RemoteOptions(
        key=key,
        key_file=args.key_file,
        broker=broker,
        models_dir=args.models_dir,
        max_pixels=max(0, args.max_pixels),
        families=families,
        metrics_port=args.metrics_port,
        cache_device_gb=args.cache_device_gb,
        log_level=args.log_level,
        engine=engine_of(args),
        fetch_budget_gb=args.fetch_budget_gb if args.fetch_missing else None,
    )
    return run_devices(options, [d.strip() for d in args.devices.split(",") if d.strip()])


def _merge(fd: int) -> int:
    """The order comes as one JSON frame on the pipe; progress, a refusal ({"error"}) and the peak
    memory go back as JSON frames; the exit status says whether it worked."""
    from multiprocessing.connection import Connection

    from common.errors import CheckpointFileError
    from common.protocol import MAX_FRAME_BYTES, BadFrame, decode_order
    from gpu_worker.merge import peak_rss_bytes, run_merge

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

    from common.protocol import MAX_FRAME_BYTES, BadFrame, BakeOrder, decode_order
    from gpu_worker.bake import BakeError, run_bake
    from gpu_worker.loaded import CheckpointLoadError
    from gpu_worker.loras import LoraError
    from gpu_worker.merge import peak_rss_bytes

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

    from common.protocol import MAX_FRAME_BYTES, BadFrame, UpscaleOrder, decode_order
    from common.upscaler_detection import UpscalerFileError
    from gpu_worker.merge import peak_rss_bytes
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the whole process group: the bot (or the CLI) reports it once;
        # a child that printed its own traceback too only buried that report.
        sys.exit(130)
