"""Server and channel settings: layers, validation that changes nothing, hidden checkpoints, NSFW policy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.guilds.settings import GuildSettings
from bot.rules.limits import Limits
from common.errors import EaselError


@pytest_asyncio.fixture
async def store(tmp_path: Path, tiny_dir: Path) -> AsyncIterator[GuildSettings]:
    models = tmp_path / "models"
    models.mkdir()
    (models / "one.safetensors").write_bytes((tiny_dir / "tiny-sd1.safetensors").read_bytes())
    db = await open_database(tmp_path / "easel.sqlite3")
    registry = CheckpointRegistry(db, models)
    await registry.scan()
    yield GuildSettings(db, registry, ["globalword"], Limits(max_steps=100))
    await db.close()


async def test_layers_channel_then_server_then_bot(store: GuildSettings) -> None:
    await store.update("g", None, {"steps": 30, "cfg": "5.5", "blocked_words": "Cats, dogs"})
    await store.update("g", "c", {"steps": "12", "negative": "blurry"})
    here = await store.effective("g", "c")
    assert (here.steps, here.cfg, here.negative, here.max_steps) == (12, 5.5, "blurry", 100)
    assert here.blocked_words == ["globalword", "cats", "dogs"]
    assert (here.sources["steps"], here.sources["cfg"], here.sources["sampler"]) == ("channel", "server", "bot")
    elsewhere = await store.effective("g", "d")
    assert (elsewhere.steps, elsewhere.negative) == (30, "")
    await store.update("g", "c", {"steps": "-"})  # cleared: the server's value shows again
    assert (await store.effective("g", "c")).steps == 30
    dm = await store.effective(None, None)
    assert (dm.steps, dm.blocked_words, dm.hidden) == (20, ["globalword"], set())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be between 1 and 150"),
        ({"steps": "many"}, "steps must be a whole number"),
        ({"cfg": 31}, "cfg must be between 0 and 30"),
        ({"sampler": "Warp 9"}, "unknown sampler 'Warp 9'"),
        ({"aspect": "5:1"}, "aspect must be one of"),
        ({"checkpoint": "nope"}, "no runnable checkpoint named 'nope'"),
        ({"nsfw": "sometimes"}, "nsfw must be one of age-restricted, never"),
        ({"max_images": 9}, "max_images must be between 1 and 4"),
        ({"spoiler": "maybe"}, "spoiler must be true or false"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({}, "nothing to change"),
        ({"steps": 10, "cfg": "x"}, "cfg must be a number"),
    ],
)
async def test_bad_values_change_nothing(store: GuildSettings, changes: dict, message: str) -> None:
    await store.update("g", None, {"steps": 25})
    with pytest.raises(EaselError, match=message):
        await store.update("g", None, changes)
    assert (await store.effective("g", None)).steps == 25


async def test_policy_is_server_wide(store: GuildSettings) -> None:
    with pytest.raises(EaselError, match="server-wide setting"):
        await store.update("g", "c", {"nsfw": "never"})
    await store.update("g", None, {"nsfw": "never", "sampler": "dpm++ 2m karras", "checkpoint": "one"})
    here = await store.effective("g", "c")
    assert not here.allow_nsfw(True) and here.sampler == "DPM++ 2M Karras"
    assert (await store.effective(None, None)).allow_nsfw(True)  # DMs follow the bot's rule
    store.nsfw_in_dms = False  # EASEL_NSFW_IN_DMS=false
    assert not (await store.effective(None, None)).allow_nsfw(True)
    assert not (await store.effective("h", None)).allow_nsfw(False)


async def test_hidden_by_identity_survives_a_rename(store: GuildSettings) -> None:
    entry = await store.hide("g", "one")
    await store.registry.edit("one", name="renamed")
    here = await store.effective("g", None)
    assert entry.sha256 in here.hidden and "renamed" in dict((k, v) for k, v, _ in await store.describe(here))["hidden"]
    assert not (await store.effective("other", None)).hidden
    await store.hide("g", "renamed", False)
    assert not (await store.effective("g", None)).hidden
    with pytest.raises(EaselError, match="no checkpoint named 'nope'"):
        await store.hide("g", "nope")


def test_cli_server_settings(cli, add_tiny) -> None:
    add_tiny("sd1", "one.safetensors")
    assert cli("checkpoints", "scan").code == 0
    assert cli("server", "set", "42", "steps=30", "checkpoint=one").code == 0
    bad = cli("server", "set", "42", "--channel", "7", "nsfw=never")
    assert bad.code == 1 and "server-wide setting" in bad.err
    assert cli("server", "set", "42", "--channel", "7", "steps=9").code == 0
    shown = json.loads(cli("server", "show", "42", "--channel", "7", "--json").out)
    assert shown["steps"] == {"value": "9", "from": "channel"} and shown["checkpoint"]["value"] == "one"
    assert "hidden in server 42" in cli("server", "hide", "42", "one").out
    assert cli("server", "reset", "42", "--channel", "7").code == 0
    assert json.loads(cli("server", "show", "42", "--channel", "7", "--json").out)["steps"]["value"] == "30"
    assert cli("server", "set", "42", "steps").err.strip() == "error: 'steps': write KEY=VALUE (KEY= clears it)"
