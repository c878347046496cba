"""Server and channel settings: defaults for /imagine, NSFW policy, limits, spoilers, hidden checkpoints.

Three layers, most specific first: the channel, the server, the bot's own configuration. Defaults
(checkpoint, steps, CFG, sampler, aspect, negative prompt) may be set per channel; policy (NSFW,
spoilers, limits, blocked words) is per server, and can only tighten what the bot's owner allows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from bot.checkpoints.registry import CheckpointEntry, CheckpointRegistry
from bot.db import transaction
from bot.generation.aspects import ASPECTS
from bot.rules.limits import MAX_PICTURES_PER_COMMAND as MAX_IMAGES
from bot.rules.limits import MAX_STEPS, Limits
from bot.rules.policy import (
    ADULT_PICTURE_ACTIONS,
    PICTURE_ACTIONS,
    check_nsfw,
    checks_pictures,
    picture_verdict,
)
from common.editing import edit_model
from common.errors import EaselError
from common.parameters import RNG_SOURCES
from common.samplers import DEFAULT_SAMPLER, parse_sampler

NSFW_POLICIES = ("age-restricted", "never")  # where NSFW checkpoints may be used in a server
DEFAULT_KEYS = ("checkpoint", "steps", "cfg", "sampler", "aspect", "negative", "rng", "edit_checkpoint")
POLICY_KEYS = (
    "nsfw",
    "spoiler",
    "max_steps",
    "max_images",
    "blocked_words",
    "nsfw_pictures",
    "nsfw_pictures_adult",
    "nsfw_threshold",
)


# Policy a channel may set for itself (else the server's applies): what happens to pictures the
# picture check flags.
CHANNEL_POLICY_KEYS = ("nsfw_pictures", "nsfw_pictures_adult", "nsfw_threshold")


class SettingsError(EaselError):
    pass


@dataclass
class Effective:
    """What applies in one channel, and where each value came from (channel, server or bot)."""

    guild_id: str | None
    channel_id: str | None
    checkpoint: str | None = None  # sha256 of the default checkpoint
    edit_checkpoint: str | None = None  # sha256 of the default edit model (/edit, the Edit button)
    steps: int = 20
    cfg: float = 7.0
    sampler: str = DEFAULT_SAMPLER
    aspect: str = "1:1"
    negative: str = ""
    rng: str = "GPU"  # A1111's random number generator source (common/parameters.py)
    nsfw: str = "age-restricted"
    spoiler: bool = False
    max_steps: int = MAX_STEPS
    max_images: int = MAX_IMAGES
    blocked_words: list[str] = field(default_factory=list)
    # Pictures the picture check scores at or over the threshold: withheld or spoilered in ordinary
    # channels; allowed, spoilered or withheld in age-restricted channels and DMs.
    nsfw_pictures: str = "withhold"
    nsfw_pictures_adult: str = "allow"
    nsfw_threshold: float = 0.5
    hidden: set[str] = field(default_factory=set)  # sha256 of checkpoints this server hides
    sources: dict[str, str] = field(default_factory=dict)

    def allow_nsfw(self, age_restricted_or_dm: bool) -> bool:
        """NSFW checkpoints: only where Discord marks the place adult-only (or a DM), and the rules allow it."""
        return age_restricted_or_dm and self.nsfw != "never"

    def visible(self, entry: CheckpointEntry, age_restricted_or_dm: bool) -> bool:
        return entry.sha256 not in self.hidden and (self.allow_nsfw(age_restricted_or_dm) or not entry.nsfw)

    def check_checkpoint(self, name: str, sha256: str, nsfw: bool, age_restricted_or_dm: bool) -> None:
        if sha256 in self.hidden:
            raise SettingsError(f"{name} is not offered in this server")
        check_nsfw(name, nsfw, self.allow_nsfw(age_restricted_or_dm))

    def picture_verdict(self, score: float | None, age_restricted_or_dm: bool) -> str:
        """post | spoiler | withhold for a picture the check scored `score` here (None: not checked)."""
        return picture_verdict(
            score, self.nsfw_threshold, self.nsfw_pictures, self.nsfw_pictures_adult, age_restricted_or_dm
        )

    def checks_pictures(self, age_restricted_or_dm: bool) -> bool:
        """Whether pictures shown here must pass the picture check first."""
        return checks_pictures(self.nsfw_pictures, self.nsfw_pictures_adult, age_restricted_or_dm)

    def check_request(self, steps: int, count: int) -> None:
        if steps > self.max_steps:
            raise SettingsError(f"this server allows at most {self.max_steps} steps")
        if count > self.max_images:
            raise SettingsError(f"this server allows at most {self.max_images} picture(s) per request")


def _cleared(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "-"))


class GuildSettings:
    def __init__(
        self,
        db: aiosqlite.Connection,
        registry: CheckpointRegistry,
        blocked_words: list[str],
        limits: Limits,
        *,
        nsfw_in_dms: bool = True,
        pictures: tuple[str, str, float] = ("withhold", "allow", 0.5),
        rng: str = "GPU",
    ) -> None:
        self.rng = rng  # the bot's default noise source (EASEL_RNG)
        self.nsfw_in_dms = nsfw_in_dms
        self.pictures = pictures  # the bot's defaults: (ordinary channels, adult places and DMs, threshold)
        self._db = db
        self.registry = registry
        self.bot_blocked_words = list(blocked_words)
        self.limits = limits

    async def _row(self, guild_id: str, channel_id: str) -> dict[str, Any]:
        async with self._db.execute(
            "SELECT settings_json FROM guild_settings WHERE guild_id = ? AND channel_id = ?", (guild_id, channel_id)
        ) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row else {}

    async def effective(self, guild_id: str | None, channel_id: str | None) -> Effective:
        result = Effective(guild_id, channel_id, rng=self.rng, blocked_words=list(self.bot_blocked_words))
        result.nsfw_pictures, result.nsfw_pictures_adult, result.nsfw_threshold = self.pictures
        result.max_steps = min(MAX_STEPS, self.limits.max_steps)
        result.sources = {key: "bot" for key in (*DEFAULT_KEYS, *POLICY_KEYS)}
        if guild_id is None:  # a DM: the bot's configuration decides
            result.nsfw = "age-restricted" if self.nsfw_in_dms else "never"
            return result
        server = await self._row(guild_id, "")
        channel = await self._row(guild_id, channel_id) if channel_id else {}
        for key in DEFAULT_KEYS:
            for scope, values in (("channel", channel), ("server", server)):
                if key in values:
                    setattr(result, key, values[key])
                    result.sources[key] = scope
                    break
        for key in CHANNEL_POLICY_KEYS:
            if key in channel:
                setattr(result, key, channel[key])
                result.sources[key] = "channel"
        for key in POLICY_KEYS:
            if key in server and result.sources.get(key) != "channel":
                value = server[key]
                if key == "blocked_words":
                    value = result.blocked_words + list(value)
                setattr(result, key, value)
                result.sources[key] = "server"
        async with self._db.execute(
            "SELECT checkpoint_sha256 FROM guild_hidden_checkpoints WHERE guild_id = ?", (guild_id,)
        ) as cur:
            result.hidden = {row[0] for row in await cur.fetchall()}
        return result

    async def update(
        self, guild_id: str, channel_id: str | None, changes: dict[str, Any], *, by: str = ""
    ) -> Effective:
        """Set (or, with "" / "-", clear) settings; every value is checked before anything is saved."""
        scope = channel_id or ""
        if not changes:
            raise SettingsError("nothing to change: give at least one setting")
        async with transaction(self._db) as db:
            current = await self._row(guild_id, scope)
            for key, value in changes.items():
                if key in POLICY_KEYS and key not in CHANNEL_POLICY_KEYS and scope:
                    raise SettingsError(f"{key} is a server-wide setting; set it without the channel option")
                if key not in DEFAULT_KEYS and key not in POLICY_KEYS:
                    raise SettingsError(f"unknown setting {key!r}; settings are {', '.join(DEFAULT_KEYS + POLICY_KEYS)}")
                if _cleared(value):
                    current.pop(key, None)
                else:
                    current[key] = await self._checked(key, value)
            await db.execute(
                "INSERT INTO guild_settings (guild_id, channel_id, settings_json, updated_at, updated_by) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, channel_id) DO UPDATE SET "
                "settings_json = excluded.settings_json, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (guild_id, scope, json.dumps(current, sort_keys=True), time.time(), by),
            )
        return await self.effective(guild_id, channel_id)

    async def _checked(self, key: str, value: Any) -> Any:
        text = str(value).strip()
        if key == "checkpoint":
            entry = await self.registry.find(text)
            if entry is None or entry.status != "present" or not entry.runnable:
                raise SettingsError(f"no runnable checkpoint named {text!r}")
            return entry.sha256
        if key == "edit_checkpoint":
            entry = await self.registry.find(text)
            if entry is None or entry.status != "present" or not entry.runnable:
                raise SettingsError(f"no runnable checkpoint named {text!r}")
            if edit_model(entry.family, entry.variant) is None:
                raise SettingsError(f"{entry.name} ({entry.architecture}) cannot edit pictures; choose an edit model such as FLUX.1 Kontext")
            return entry.sha256
        if key in ("steps", "max_steps"):
            number = _int(key, value)
            if not 1 <= number <= MAX_STEPS:
                raise SettingsError(f"{key} must be between 1 and {MAX_STEPS}")
            return number
        if key == "max_images":
            number = _int(key, value)
            if not 1 <= number <= MAX_IMAGES:
                raise SettingsError(f"max_images must be between 1 and {MAX_IMAGES}")
            return number
        if key == "cfg":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise SettingsError(f"cfg must be a number, not {text!r}") from None
            if not 0 <= number <= 30:
                raise SettingsError("cfg must be between 0 and 30")
            return number
        if key == "sampler":
            try:
                sampler, schedule = parse_sampler(text)
            except ValueError as e:
                raise SettingsError(str(e)) from None
            return sampler if " ".join(text.split()).lower() == sampler.lower() else f"{sampler} {schedule}"
        if key == "rng":
            if text.upper() not in RNG_SOURCES:
                raise SettingsError(f"rng must be one of {', '.join(RNG_SOURCES)} (GPU: A1111's default)")
            return text.upper()
        if key == "aspect":
            if text not in ASPECTS:
                raise SettingsError(f"aspect must be one of {', '.join(ASPECTS)}")
            return text
        if key == "negative":
            if len(text) > 1000:
                raise SettingsError("the default negative prompt is limited to 1,000 characters")
            return text
        if key == "nsfw":
            if text not in NSFW_POLICIES:
                raise SettingsError(f"nsfw must be one of {', '.join(NSFW_POLICIES)}")
            return text
        if key == "nsfw_pictures":
            if text not in PICTURE_ACTIONS:
                raise SettingsError(f"nsfw_pictures must be one of {', '.join(PICTURE_ACTIONS)}")
            return text
        if key == "nsfw_pictures_adult":
            if text not in ADULT_PICTURE_ACTIONS:
                raise SettingsError(f"nsfw_pictures_adult must be one of {', '.join(ADULT_PICTURE_ACTIONS)}")
            return text
        if key == "nsfw_threshold":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise SettingsError(f"nsfw_threshold must be a number, not {text!r}") from None
            if not 0 <= number <= 1:
                raise SettingsError("nsfw_threshold must be between 0 and 1 (0.5 by default; lower catches more)")
            return number
        if key == "spoiler":
            if isinstance(value, bool):
                return value
            if text.lower() in ("true", "yes", "on", "1"):
                return True
            if text.lower() in ("false", "no", "off", "0"):
                return False
            raise SettingsError("spoiler must be true or false")
        words = value if isinstance(value, list) else text.split(",")  # blocked_words
        return sorted({w.strip().lower() for w in words if str(w).strip()})

    async def reset(self, guild_id: str, channel_id: str | None) -> None:
        async with transaction(self._db) as db:
            await db.execute(
                "DELETE FROM guild_settings WHERE guild_id = ? AND channel_id = ?", (guild_id, channel_id or "")
            )

    async def hide(self, guild_id: str, checkpoint: str, hidden: bool = True) -> CheckpointEntry:
        entry = await self.registry.find(checkpoint)
        if entry is None:
            raise SettingsError(f"no checkpoint named {checkpoint!r}")
        async with transaction(self._db) as db:
            if hidden:
                await db.execute(
                    "INSERT OR IGNORE INTO guild_hidden_checkpoints (guild_id, checkpoint_sha256) VALUES (?, ?)",
                    (guild_id, entry.sha256),
                )
            else:
                await db.execute(
                    "DELETE FROM guild_hidden_checkpoints WHERE guild_id = ? AND checkpoint_sha256 = ?",
                    (guild_id, entry.sha256),
                )
        return entry

    async def describe(self, effective: Effective) -> list[tuple[str, str, str]]:
        """(setting, value, where it comes from) rows for showing."""
        names = {e.sha256: e.name for e in await self.registry.list()}
        rows = []
        for key in (*DEFAULT_KEYS, *POLICY_KEYS):
            value = getattr(effective, key)
            if key in ("checkpoint", "edit_checkpoint"):
                value = names.get(value, "?") if value else "(first installed)"
            elif key == "blocked_words":
                value = ", ".join(value) or "(none)"
            elif key == "negative":
                value = value or "(none)"
            rows.append((key, str(value), effective.sources.get(key, "bot")))
        hidden = ", ".join(sorted(names.get(sha, sha[:10]) for sha in effective.hidden)) or "(none)"
        rows.append(("hidden", hidden, "server"))
        return rows


def _int(key: str, value: Any) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{key} must be a whole number, not {value!r}") from None
