"""`python -m gpu_worker …`: worker-side commands that need torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run as the bot's worker, on the pipe the bot passes as --fd")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--config", default="{}", help="WorkerConfig as JSON")
    p = sub.add_parser("make-tiny-checkpoint")
    p.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "serve":
        import json
        from multiprocessing.connection import Connection

        from gpu_worker.worker import WorkerConfig, serve

        serve(Connection(args.fd), WorkerConfig(**json.loads(args.config)))
        return 0
    from gpu_worker.tiny import make_tiny_checkpoint

    try:
        out = make_tiny_checkpoint(args.arch, Path(args.out), seed=args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (tiny {args.arch}, seed {args.seed}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
