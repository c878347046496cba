"""`python bot.py styles import FILE [--guild ID] | list [--guild ID] [--json] | remove NAME [--guild ID]`:
prompt styles (bot/styles.py) from an A1111 `styles.csv`, the bot's own or a server's."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bot.config import Settings
from bot.db import open_database
from bot.styles import BOT_WIDE, MAX_CSV_BYTES, StyleBook, StyleError, read_csv
from common.errors import EaselError


def _scope(args: argparse.Namespace) -> str:
    if args.guild is None:
        return BOT_WIDE
    if not args.guild.isdigit() or len(args.guild) > 20:
        raise EaselError(f"--guild {args.guild[:30]!r} is not a server id (a number)")
    return args.guild


def _read(name: str) -> bytes:
    path = Path(name).expanduser()
    try:
        with path.open("rb") as file:
            return file.read(MAX_CSV_BYTES + 1)
    except OSError as e:
        raise EaselError(f"{path}: {e.strerror or e}") from None


async def cmd_styles(args: argparse.Namespace, settings: Settings) -> int:
    scope = _scope(args)
    data = await asyncio.to_thread(_read, args.file) if args.styles_command == "import" else b""
    db = await open_database(settings.database_path)
    try:
        book = StyleBook(db)
        if args.styles_command == "import":
            styles = read_csv(data)
            await book.add(scope, styles)
            print(f"imported {len(styles)} style(s) {'for every server' if scope == BOT_WIDE else f'for server {scope}'}")
        elif args.styles_command == "remove":
            await book.remove(scope, args.name)
            print(f"removed {args.name}")
        else:
            styles = await book.list(scope)
            if args.json:
                print(json.dumps([{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative} for s in styles]))
            for style in [] if args.json else styles:
                print(f"{style.name}: {style.prompt}" + (f" | negative: {style.negative}" if style.negative else ""))
            if not styles and not args.json:
                print("no styles; `styles import styles.csv` reads A1111's file")
    except StyleError as e:
        raise EaselError(str(e)) from None
    finally:
        await db.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    styles = sub.add_parser("styles", help="prompt styles, as A1111's styles.csv holds them")
    ssub = styles.add_subparsers(dest="styles_command", required=True)
    p = ssub.add_parser("import", help="read an A1111 styles.csv (name, prompt, negative_prompt)")
    p.add_argument("file")
    p.add_argument("--guild", help="for this server only (its id); default: every server, DMs and the CLI")
    p.set_defaults(handler=cmd_styles)
    p = ssub.add_parser("list", help="the styles stored")
    p.add_argument("--guild", help="a server's own styles (its id)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_styles)
    p = ssub.add_parser("remove", help="forget a style")
    p.add_argument("name")
    p.add_argument("--guild", help="a server's own style (its id)")
    p.set_defaults(handler=cmd_styles)
