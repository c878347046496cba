"""`python bot.py` / `run` / `playground`: the bot on Discord with a token, else the local playground."""

from __future__ import annotations

import argparse
import logging
import sys

from bot.config import Settings

log = logging.getLogger(__name__)


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "command", None) == "playground" or settings.discord_token is None:
        return await run_playground(args, settings)
    from bot.services import open_services
    from cogs.app import create_bot

    services = await open_services(settings)
    bot = create_bot(services, dev_guild=getattr(args, "dev_guild", None), shard_count=settings.shard_count())
    try:
        await bot.start(settings.discord_token.get_secret_value())
    finally:
        await bot.close()
        await services.close()
    return 0


async def run_playground(args: argparse.Namespace, settings: Settings) -> int:
    from cogs.playground import run_playground as serve

    if settings.discord_token is None:
        sys.stderr.write("No Discord token (EASEL_DISCORD_TOKEN): starting the local playground instead.\n")
    sys.stderr.write("Starting the GPU worker and the bot (about 15 s)…\n")

    def ready(url: str) -> None:
        print(f"\nEasel playground: open {url}\nType /imagine in the box at the bottom. Ctrl-C stops it.", flush=True)

    await serve(settings, port=getattr(args, "port", None), on_ready=ready)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the bot (on Discord with a token, else the local playground)")
    p.add_argument("--dev-guild", type=int, help="sync commands to this guild only (instant, for development)")
    p.add_argument("--port", type=int, help="playground port (default: any free one)")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("playground", help="run the bot locally in a browser, no Discord account needed")
    p.add_argument("--port", type=int, help="loopback port (default: any free one)")
    p.set_defaults(handler=cmd_run)
