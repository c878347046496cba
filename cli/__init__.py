"""The command line: `python bot.py COMMAND …`. Each command calls the same services the bot uses."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from bot.config import load_settings
from cli import (
    catalog,
    checkpoints,
    generate,
    merge,
    networks,
    noise,
    prompt,
    run,
    safety,
    sampler,
    server,
    share,
    styles,
    upscale,
    wildcards,
    workers,
)
from common.errors import EaselError

log = logging.getLogger("easel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bot.py", description="Easel: Stable Diffusion checkpoints in Discord."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the services do")
    sub = parser.add_subparsers(dest="command")
    run.add_parsers(sub)
    checkpoints.add_parsers(sub)
    networks.add_parsers(sub)
    generate.add_parsers(sub)
    merge.add_parsers(sub)
    catalog.add_parsers(sub)
    server.add_parsers(sub)
    prompt.add_parsers(sub)
    upscale.add_parsers(sub)
    safety.add_parsers(sub)
    noise.add_parsers(sub)
    sampler.add_parsers(sub)
    styles.add_parsers(sub)
    wildcards.add_parsers(sub)
    workers.add_parsers(sub)
    share.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", run.cmd_run)
    try:
        settings = load_settings()
        return asyncio.run(_until_terminated(handler(args, settings)))
    except EaselError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("stopped (SIGTERM)", file=sys.stderr)
        return 143
    except Exception:  # an operator needs the traceback; the message still comes first
        log.exception("unexpected error")
        return 1


class Terminated(Exception):
    """SIGTERM arrived: the command was cancelled, so its cleanup (temporary files…) ran."""


async def _until_terminated(command: Coroutine[Any, Any, int]) -> int:
    """Run `command`; SIGTERM cancels it as Ctrl-C does, so `finally` blocks run and nothing is left half-done."""
    task = asyncio.ensure_future(command)
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await task
    except asyncio.CancelledError:
        if terminated:
            raise Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
