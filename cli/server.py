"""`python bot.py server …`: a Discord server's settings from the host (the same store /settings uses)."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.checkpoints.registry import CheckpointRegistry
from bot.config import Settings
from bot.db import open_database
from bot.guilds.settings import DEFAULT_KEYS, POLICY_KEYS, GuildSettings
from bot.rules.limits import Limits
from common.errors import EaselError


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[GuildSettings]:
    db = await open_database(settings.database_path)
    try:
        registry = CheckpointRegistry(db, settings.models_dir.expanduser().resolve())
        yield GuildSettings(
            db, registry, settings.blocked_words, Limits(), nsfw_in_dms=settings.nsfw_in_dms, rng=settings.rng
        )
    finally:
        await db.close()


async def _show(store: GuildSettings, guild: str, channel: str | None, as_json: bool) -> None:
    effective = await store.effective(guild, channel)
    rows = await store.describe(effective)
    if as_json:
        print(json.dumps({key: {"value": value, "from": source} for key, value, source in rows}, indent=2))
        return
    for key, value, source in rows:
        print(f"{key + ':':<15}{value}  ({source})")


async def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    async with open_store(settings) as store:
        await _show(store, args.guild, args.channel, args.json)
    return 0


async def cmd_set(args: argparse.Namespace, settings: Settings) -> int:
    changes = {}
    for pair in args.settings:
        key, sep, value = pair.partition("=")
        if not sep:
            raise EaselError(f"{pair!r}: write KEY=VALUE (KEY= clears it)")
        changes[key.strip()] = value
    async with open_store(settings) as store:
        await store.update(args.guild, args.channel, changes, by="cli")
        await _show(store, args.guild, args.channel, False)
    return 0


async def cmd_hide(args: argparse.Namespace, settings: Settings) -> int:
    async with open_store(settings) as store:
        entry = await store.hide(args.guild, args.checkpoint, args.command_name == "hide")
    print(f"{entry.name} is {'hidden' if args.command_name == 'hide' else 'offered again'} in server {args.guild}")
    return 0


async def cmd_reset(args: argparse.Namespace, settings: Settings) -> int:
    async with open_store(settings) as store:
        await store.reset(args.guild, args.channel)
    print(f"forgot the settings of {'channel ' + args.channel if args.channel else 'server ' + args.guild}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser("server", help="a Discord server's defaults and rules (as /settings sets them)")
    ssub = server.add_subparsers(dest="server_command", required=True)
    p = ssub.add_parser("show", help="the settings that apply in a server (or one of its channels)")
    p.add_argument("guild", help="server (guild) id")
    p.add_argument("--channel", help="channel id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)
    p = ssub.add_parser("set", help=f"KEY=VALUE …; keys: {', '.join(DEFAULT_KEYS + POLICY_KEYS)}")
    p.add_argument("guild")
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--channel", help="set defaults for one channel only")
    p.set_defaults(handler=cmd_set)
    for name in ("hide", "unhide"):
        p = ssub.add_parser(name, help=f"{name} a checkpoint in a server")
        p.add_argument("guild")
        p.add_argument("checkpoint")
        p.set_defaults(handler=cmd_hide, command_name=name)
    p = ssub.add_parser("reset", help="forget a server's (or channel's) settings")
    p.add_argument("guild")
    p.add_argument("--channel")
    p.set_defaults(handler=cmd_reset)
