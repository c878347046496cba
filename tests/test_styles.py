"""Prompt styles as A1111 applies them (bot/styles.py): its merge rule, its styles.csv layout read as
untrusted text, a server's styles beside the bot's, and every rule judging the styled prompt."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.service import GenerationService
from bot.guilds.settings import GuildSettings
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.rules.limits import Limits
from bot.styles import BOT_WIDE, MAX_STYLES, Style, StyleBook, StyleError, apply, merge, read_csv
from common.errors import EaselError

# A1111's styles.csv as it writes it (csv module, minimal quoting): quotes and commas inside fields.
A1111_CSV = (
    b"\xef\xbb\xbfname,prompt,negative_prompt\n"
    b"None,,\n"
    b'Cinematic,"cinematic still of {prompt}, shallow depth of field, ""film grain""","blurry, lowres"\n'
    b"Watercolour,watercolour painting,photo\n"
    b',"a row with no name",\n'
    b"# a comment,,\n"
)


@pytest.mark.parametrize(
    ("style", "text", "merged"),
    [
        ("{prompt}, masterpiece", "a cat", "a cat, masterpiece"),  # the placeholder takes the text
        ("oil painting", "a cat", "a cat, oil painting"),  # no placeholder: added after, with ", "
        ("oil painting", "", "oil painting"),  # an empty text is left out
        ("", "a cat", "a cat"),
        ("  ", "  a cat  ", "a cat"),  # A1111 strips both before joining
        ("art of {prompt} and {prompt}", "a cat", "art of a cat and a cat"),  # every placeholder
    ],
)
def test_a1111s_merge_rule(style: str, text: str, merged: str) -> None:
    assert merge(style, text) == merged


def test_styles_apply_in_order_to_the_prompt_and_the_negative() -> None:
    styles = [Style("a", "{prompt}, by an old master", "blurry"), Style("b", "sepia", "{prompt}, lowres")]
    assert apply(styles, "a cat", "") == ("a cat, by an old master, sepia", "blurry, lowres")


def test_a1111s_styles_csv_with_quotes_commas_a_bom_and_its_placeholder_row() -> None:
    styles = read_csv(A1111_CSV)
    assert [s.name for s in styles] == ["None", "Cinematic", "Watercolour"]  # nameless rows and comments skipped
    assert read_csv(b"name,text\nold,an old layout\n") == [Style("old", "an old layout")]  # A1111's first layout
    assert styles[1] == Style("Cinematic", 'cinematic still of {prompt}, shallow depth of field, "film grain"', "blurry, lowres")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe\x00n\x00a", "is not UTF-8 text"),
        (b"title,text\nx,y\n", "has no `name` column"),
        (b"name,prompt\n" + b"x" * (1 << 20), "the limit is 1,048,576"),
        (b"name,prompt\nok,fine\nlong," + b"y" * 2001 + b"\n", "line 3: style 'long': its prompt is 2,001 characters"),
        (b"name,prompt\n\"a, b\",x\n", "line 2: style name 'a, b' is too long or has a comma"),
        (b"name,prompt\nnul,\"x\x00y\"\n", "line 2: style 'nul' has characters that are not text"),
        (b"name\n" + b"".join(b"s%d\n" % i for i in range(MAX_STYLES + 1)), f"the limit is {MAX_STYLES}"),
    ],
)
def test_a_hostile_styles_file_is_refused_whole_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(StyleError, match=message.replace("(", r"\(")):
        read_csv(data)


# --- stored, offered, and applied before the rules ---------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("styles")
    (root / "models").mkdir()
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", root / "models" / "tiny-sd1.safetensors")
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, root / "models")
    await registry.scan()
    limits = Limits()
    generation = GenerationService(db, [], limits)  # never started: plans need no worker
    settings = GuildSettings(db, registry, ["forbidden"], limits)
    yield Jobs(registry, generation, settings, styles=StyleBook(db))
    await db.close()


HOST = Asker.host()
SERVER = Place(guild_id="77", channel_id="1")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_servers_style_shadows_the_bots_and_the_plan_draws_the_styled_prompt(jobs: Jobs) -> None:
    book = jobs.styles
    assert book is not None
    await book.add(BOT_WIDE, read_csv(A1111_CSV))
    await book.add("77", [Style("watercolour", "{prompt} in pale watercolour", "ink")])
    assert [s.name for s in await book.offered("77")] == ["watercolour", "Cinematic", "None"]  # the server's first
    options = ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", styles=("Watercolour", "cinematic"), negative="text")
    [spec] = (await jobs.plan_imagine(HOST, SERVER, options)).specs
    assert spec.parameters.prompt == "cinematic still of a fox in pale watercolour, shallow depth of field, \"film grain\""
    assert spec.parameters.negative == "text, ink, blurry, lowres"
    [plain] = (await jobs.plan_imagine(HOST, Place.command_line(), options)).specs  # no server: the bot's styles
    assert plain.parameters.prompt.startswith("cinematic still of a fox, watercolour painting")


@pytest.mark.asyncio(loop_scope="module")
async def test_unknown_styles_and_styles_that_break_a_rule_are_refused_in_one_line(jobs: Jobs) -> None:
    book = jobs.styles
    assert book is not None
    await book.add("77", [Style("edgy", "{prompt}, forbidden", "")])
    for styles, message in (
        (("nope",), "no style named 'nope' here; /settings styles list shows them"),
        (("edgy",), "a word this server does not allow"),  # the blocked word is in the style
        (("a", "b", "c", "d", "e", "f"), "6 styles; at most 5 a picture"),
    ):
        with pytest.raises(EaselError, match=message):
            await jobs.plan_imagine(HOST, SERVER, ImagineOptions.of(prompt="a fox", checkpoint="tiny-sd1", styles=styles))
    await book.remove("77", "EDGY")  # names match whatever their case
    with pytest.raises(StyleError, match="no style named 'edgy' to remove"):
        await book.remove("77", "edgy")


def test_the_styles_command_imports_lists_and_removes(env: Path, cli) -> None:
    (env / "styles.csv").write_bytes(A1111_CSV)
    assert cli("styles", "import", "styles.csv").out.strip() == "imported 3 style(s) for every server"
    listed = cli("styles", "list")
    assert listed.code == 0 and "Cinematic: cinematic still of {prompt}" in listed.out
    assert cli("styles", "import", "styles.csv", "--guild", "12").code == 0
    assert cli("styles", "remove", "Watercolour", "--guild", "12").code == 0
    assert [s["name"] for s in json.loads(cli("styles", "list", "--guild", "12", "--json").out)] == ["Cinematic", "None"]
    (env / "bad.csv").write_bytes(b"name,prompt\n\"a, b\",x\n")
    refused = cli("styles", "import", "bad.csv")
    assert refused.code == 1 and refused.err.strip() == "error: line 2: style name 'a, b' is too long or has a comma (names are listed with commas)"
    assert cli("styles", "list").out.count("\n") == 3  # the bad file changed nothing
    unknown = cli("generate", "--checkpoint", "x", "--prompt", "a fox", "--style", "Nope", "--out", "o")
    assert (unknown.code == 1 and "no style named" in unknown.err) or "no checkpoint named" in unknown.err
