"""`python bot.py` / `run` / `playground`: start the bot on Discord, or locally without a token."""

from __future__ import annotations

import argparse
import sys

from bot.config import Settings

NO_PLAYGROUND_YET = """\
Easel needs a Discord bot token to run on Discord: set EASEL_DISCORD_TOKEN (environment or .env),
or discord_token in easel.toml.
Without a token, `python bot.py` will start the local playground (a Discord-like page in your
browser); it is not built yet (issue #4). Until then, the CLI works without a token:
  python bot.py inspect PATH            python bot.py checkpoints scan
  python bot.py checkpoints list        python bot.py make-tiny-checkpoint --arch sd1 models/tiny.safetensors
"""

NO_BOT_YET = """\
A Discord token is set, but the Discord cogs are not built yet (issue #4); nothing to run on Discord.
The CLI works: `python bot.py --help`.
"""


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "command", None) == "playground" or settings.discord_token is None:
        sys.stderr.write(NO_PLAYGROUND_YET)
        return 2
    sys.stderr.write(NO_BOT_YET)
    return 2


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("run", help="run the bot (on Discord with a token, else the local playground)").set_defaults(
        handler=cmd_run
    )
    sub.add_parser("playground", help="run the bot locally in a browser, no Discord account needed").set_defaults(
        handler=cmd_run
    )
