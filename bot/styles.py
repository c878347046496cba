"""Prompt styles, as A1111 keeps and applies them (modules/styles.py; facts, not code).

A style is a name, a prompt and a negative prompt. Applied to a job, each style in turn merges into
the prompt (and its negative into the negative prompt): where the style's text holds `{prompt}`,
the person's text takes its place; otherwise the two are joined with ", " (empty parts left out).
The infotext then carries the styled prompt, as A1111's does (it writes no style names).

A server keeps its own styles (`/settings styles`); the bot's own (scope '') serve every server,
DMs and the command line, a server's style of the same name coming first. `styles.csv` files (A1111's
layout: a header row `name,prompt,negative_prompt`, quoted fields, extra columns ignored) are read
as untrusted text: a size cap, UTF-8, a cap on rows and on each field.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import aiosqlite

from bot.db import transaction
from bot.untrusted import has_lone_surrogate
from common.errors import EaselError

MAX_CSV_BYTES = 1 << 20
MAX_STYLES = 500  # per scope
MAX_NAME_CHARS = 100  # a Discord choice's name
MAX_TEXT_CHARS = 2000
MAX_STYLES_PER_JOB = 5
BOT_WIDE = ""


class StyleError(EaselError):
    """A style that cannot be read, stored or found; the message says which and why."""


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative: str = ""


def merge(style_text: str, text: str) -> str:
    """A1111's `merge_prompts`: `{prompt}` replaced by the text, or the two joined with ", "."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", text)
    return ", ".join(part for part in (text.strip(), style_text.strip()) if part)


def apply(styles: list[Style], prompt: str, negative: str) -> tuple[str, str]:
    """The prompt and negative prompt with each style merged in, in order."""
    for style in styles:
        prompt, negative = merge(style.prompt, prompt), merge(style.negative, negative)
    return prompt, negative


def checked(name: str, prompt: str, negative: str) -> Style:
    """A style from a person or a file, or StyleError naming what is wrong with it."""
    name = " ".join(name.split())
    if not name:
        raise StyleError("a style needs a name")
    if len(name) > MAX_NAME_CHARS or "," in name:
        raise StyleError(f"style name {name[:40]!r} is too long or has a comma (names are listed with commas)")
    for label, text in (("prompt", prompt), ("negative prompt", negative)):
        if len(text) > MAX_TEXT_CHARS:
            raise StyleError(f"style {name!r}: its {label} is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    if any(has_lone_surrogate(text) or "\x00" in text for text in (name, prompt, negative)):
        raise StyleError(f"style {name[:40]!r} has characters that are not text")
    return Style(name, prompt.strip(), negative.strip())


def read_csv(data: bytes) -> list[Style]:
    """The styles of an A1111 `styles.csv`, or StyleError with the first thing wrong."""
    if len(data) > MAX_CSV_BYTES:
        raise StyleError(f"the styles file is {len(data):,} bytes; the limit is {MAX_CSV_BYTES:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StyleError("the styles file is not UTF-8 text") from None
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True))
    except csv.Error as e:
        raise StyleError(f"the styles file is not CSV: {e}") from None
    if rows and "name" not in rows[0]:
        raise StyleError("the styles file has no `name` column (A1111's header: name,prompt,negative_prompt)")
    if len(rows) > MAX_STYLES:
        raise StyleError(f"the styles file has {len(rows):,} styles; the limit is {MAX_STYLES}")
    styles: dict[str, Style] = {}
    for number, row in enumerate(rows, start=2):
        name = (row.get("name") or "").strip()
        if not name or name.startswith("#"):
            continue  # A1111 skips empty rows and comments; its "None" row is a style that adds nothing
        try:
            # A1111's old layout named the prompt column "text"
            style = checked(name, row.get("prompt") or row.get("text") or "", row.get("negative_prompt") or "")
        except StyleError as e:
            raise StyleError(f"line {number}: {e}") from None
        styles[style.name] = style
    return list(styles.values())


class StyleBook:
    """The styles in the database: the bot's and each server's."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def list(self, scope: str) -> list[Style]:
        async with self._db.execute(
            "SELECT name, prompt, negative FROM styles WHERE scope = ? ORDER BY name COLLATE NOCASE", (scope,)
        ) as cur:
            return [Style(*row) for row in await cur.fetchall()]

    async def offered(self, guild_id: str | None) -> list[Style]:
        """What a place can use: its server's styles, then the bot's that no server style shadows."""
        own = await self.list(guild_id) if guild_id else []
        names = {style.name.lower() for style in own}
        return own + [style for style in await self.list(BOT_WIDE) if style.name.lower() not in names]

    async def resolve(self, names: list[str], guild_id: str | None) -> list[Style]:
        """The named styles, in the order given; StyleError naming the first that is not here."""
        if len(names) > MAX_STYLES_PER_JOB:
            raise StyleError(f"{len(names)} styles; at most {MAX_STYLES_PER_JOB} a picture")
        known = {style.name.lower(): style for style in await self.offered(guild_id)}
        found = []
        for name in names:
            style = known.get(" ".join(name.split()).lower())
            if style is None:
                where = "/settings styles list" if guild_id else "`styles list`"
                raise StyleError(f"no style named {name[:40]!r} here; {where} shows them")
            found.append(style)
        return found

    async def add(self, scope: str, styles: list[Style]) -> None:
        """Styles stored (replacing those of the same name), all or none."""
        async with transaction(self._db) as db:
            async with db.execute("SELECT lower(name) FROM styles WHERE scope = ?", (scope,)) as cur:
                existing = {row[0] for row in await cur.fetchall()}
            total = len(existing | {style.name.lower() for style in styles})
            if total > MAX_STYLES:
                raise StyleError(f"that would make {total} styles; the limit is {MAX_STYLES}")
            await db.executemany(
                "DELETE FROM styles WHERE scope = ? AND lower(name) = lower(?)", [(scope, s.name) for s in styles]
            )
            await db.executemany(
                "INSERT INTO styles (scope, name, prompt, negative) VALUES (?, ?, ?, ?)",
                [(scope, s.name, s.prompt, s.negative) for s in styles],
            )

    async def remove(self, scope: str, name: str) -> None:
        async with transaction(self._db) as db:
            cur = await db.execute("DELETE FROM styles WHERE scope = ? AND lower(name) = lower(?)", (scope, name.strip()))
            if cur.rowcount == 0:
                raise StyleError(f"no style named {name[:40]!r} to remove")


def parse_names(text: str) -> list[str]:
    """Style names as /imagine's option takes them: comma-separated."""
    return [name.strip() for name in text.split(",") if name.strip()]
