"""Wildcards and dynamic prompts as A1111's Dynamic Prompts extension reads them (bot/wildcards.py):
each syntax form, the same seed giving the same prompt in any process, each picture its own, hostile
wildcard files, and every rule reading every picture's expansion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.service import GenerationService
from bot.guilds.settings import GuildSettings
from bot.images.infotext import parse_infotext
from bot.jobs import Asker, ImagineOptions, Jobs, Place
from bot.networks.registry import LoraRegistry
from bot.rules.limits import Limits
from bot.wildcards import MAX_FILE_BYTES, WildcardError, WildcardLibrary, Wildcards, read_wildcards
from common.errors import EaselError
from common.infotext import build_infotext, with_template
from tests.conftest import REPO

SEEDS = list(range(100, 140))


def folder(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    root = tmp_path / "wildcards"
    for name, content in files.items():
        path = root / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


@pytest.fixture
def library(tmp_path: Path) -> Wildcards:
    files = {
        "animals": "# comment lines and blank lines are skipped\n\ncat\ndog\n__colors/warm__ fox\n",
        "colors/warm": "red\norange\n",
        "colors/cold": "blue\n",
        "plain": "snow",
    }
    return read_wildcards([folder(tmp_path, files)])


def test_every_form_of_the_syntax(library: Wildcards) -> None:
    def each(template: str) -> set[str]:
        return set(library.expand(template, SEEDS))

    assert each("a {red|blue|green} ball") == {"a red ball", "a blue ball", "a green ball"}
    assert each("{0::x|1::y}") == {"y"}  # weight 0 is never chosen
    assert all(len(set(p.split(","))) == 2 and set(p.split(",")) <= {"a", "b", "c"} for p in each("{2$$a|b|c}"))
    assert all(1 <= len(p.split(" and ")) <= 2 for p in each("{1-2$$ and $$a|b|c}"))  # a range, its own separator
    assert each("__animals__") == {"cat", "dog", "red fox", "orange fox"}  # nested: a wildcard in a wildcard
    assert each("__colors/cold__") == {"blue"}  # a folder's file
    assert each("__colors/*__") == {"red", "orange", "blue"}  # a glob
    assert each("a {__plain__|rain}") == {"a snow", "a rain"}  # a wildcard in a variant
    assert library.expand("no syntax here", [1]) == ["no syntax here"]


def test_the_same_seed_gives_the_same_prompt_in_any_process_and_each_picture_its_own(library: Wildcards, tmp_path: Path) -> None:
    template = "a {red|blue|green|gold} __animals__ in {rain|snow|sun}"
    here = library.expand(template, SEEDS)
    assert here == library.expand(template, SEEDS) and len(set(here)) > 4
    assert library.expand(template, SEEDS[5:6]) == here[5:6]  # a picture's prompt does not depend on its batch
    code = (
        "import json, sys; from pathlib import Path; from bot.wildcards import read_wildcards\n"
        "w = read_wildcards([Path(sys.argv[1])]); print(json.dumps(w.expand(sys.argv[2], list(range(100, 140)))))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "wildcards"), template], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "123"}, check=True,
    )  # fmt: skip
    assert json.loads(other.stdout) == here


@pytest.mark.parametrize(
    ("files", "refused", "why"),
    [
        ({"big": b"x\n" * (MAX_FILE_BYTES // 2 + 1)}, "big", "at most 1,048,576 a file"),
        ({"binary": b"\xff\xfe\x00\x81 not text"}, "binary", "not UTF-8 text"),
        ({"long": "y" * 1001}, "long", "a line longer than 1000 characters"),
        ({"loop": "a __loop__"}, "loop", "it leads back to itself (loop → loop)"),
        ({"a": "__b__", "b": "x\n__a__"}, "a", "it leads back to itself (a → b → a)"),
        ({"all": "__*__ and more"}, "all", "it leads back to itself (all → all)"),  # a glob that names itself
        ({"near": "__loop2__", "loop2": "__loop2__ again"}, "near", "(loop2 → loop2)"),  # reaches a loop
    ],
)
def test_hostile_wildcard_files_are_refused_by_name(tmp_path: Path, files: dict, refused: str, why: str) -> None:
    found = read_wildcards([folder(tmp_path, {**files, "fine": "ok"})])
    assert refused not in found.values and why in found.refused[refused]
    assert found.values["fine"] == ["ok"]  # the rest is offered
    with pytest.raises(WildcardError, match=f"wildcard __{refused}__ is not offered"):
        found.expand(f"a __{refused}__", [1])


def test_names_reach_only_what_was_read(tmp_path: Path, library: Wildcards) -> None:
    (tmp_path / "secret.txt").write_text("password")
    outside = folder(tmp_path, {"fine": "ok"})
    (outside / "link.txt").symlink_to(tmp_path / "secret.txt")
    found = read_wildcards([outside])
    assert "link" in found.refused and "a link out of the wildcard folder" in found.refused["link"]
    for template in ("__../secret__", "__/etc/passwd__", "__nothing__"):
        with pytest.raises(WildcardError, match="no wildcard named"):
            found.expand(template, [1])
    with pytest.raises(WildcardError, match="syntax cannot be read"):
        library.expand("a {red|blue", [1])


def test_structured_files_are_read_as_the_library_names_them(tmp_path: Path) -> None:
    """YAML and JSON wildcards (Dynamic Prompts' structured files): nested keys under the file's folder,
    a file that is one list by its own name, weighted entries; hostile ones refused by name."""
    root = tmp_path / "wildcards"
    (root / "pack").mkdir(parents=True)
    (root / "pack" / "artists.yaml").write_text(
        "artists:\n  finnish:\n    - Akseli Gallen-Kallela\n    - Helene Schjerfbeck\n  dutch: Piet Mondrian\n"
        "  1234: 5678\n  flurp: 12345\nweather:\n  - 0::hail\n  - 1::fog\n"
    )
    (root / "seasons.json").write_text(json.dumps(["summer", {"text": "winter", "weight": 0}, {"content": "spring"}]))
    # Aliases: each level ten keys of the level below, 10^6 wildcards if walked out.
    levels = ["l0: &l0 {" + ", ".join(f"k{i}: [x]" for i in range(10)) + "}"]
    levels += [f"l{n}: &l{n} {{" + ", ".join(f"k{i}: *l{n - 1}" for i in range(10)) + "}" for n in range(1, 6)]
    (root / "bomb.yaml").write_text("\n".join(levels) + "\n")
    (root / "tagged.yaml").write_text("x: !!python/object/apply:os.system ['true']\n")
    (root / "broken.json").write_text("{not json")
    found = read_wildcards([root])
    assert found.values["pack/artists/finnish"] == ["Akseli Gallen-Kallela", "Helene Schjerfbeck"]
    assert found.values["pack/artists/dutch"] == ["Piet Mondrian"] and "pack/artists/flurp" not in found.values
    assert set(found.expand("__pack/weather__", SEEDS)) == {"fog"}  # weight 0: never
    assert set(found.expand("__seasons__", SEEDS)) == {"summer", "spring"}
    assert set(found.expand("__pack/artists/*__", SEEDS)) == {"Akseli Gallen-Kallela", "Helene Schjerfbeck", "Piet Mondrian"}
    assert "not valid YAML" in found.refused["tagged.yaml"] and "not valid JSON" in found.refused["broken.json"]
    assert "more than 100,000 keys and entries" in found.refused["bomb.yaml"]


def test_repetitions_that_would_explode_are_refused(tmp_path: Path) -> None:
    found = read_wildcards([folder(tmp_path, {"a": "{50$$__b__|x}", "b": "{50$$__c__|y}", "c": "{50$$p|q|r}"})])
    with pytest.raises(WildcardError, match="more than 10,000 pieces"):
        found.expand("{10$$__a__}", [1])


def test_the_template_lines_are_written_and_read_as_the_extension_writes_them() -> None:
    text = with_template(build_infotext("a red fox", "blurry", {"Steps": 4, "Seed": 7, "Size": "64x64"}), "a {red|blue} fox", "")
    assert text.splitlines()[-1] == "Template: a {red|blue} fox"
    read = parse_infotext(text)
    assert (read.prompt, read.negative, read.params["Seed"], read.params["Template"]) == ("a red fox", "blurry", "7", "a {red|blue} fox")
    assert "Negative Template" not in read.params


def test_the_library_reads_again_when_a_file_changes(tmp_path: Path) -> None:
    root = folder(tmp_path, {"w": "one"})
    library = WildcardLibrary([root])
    assert library.current().values["w"] == ["one"]
    (root / "w.txt").write_text("one\ntwo three")
    assert library.current().values["w"] == ["one", "two three"]


# --- through the rules ------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jobs(tiny_dir: Path, tiny_loras: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jobs]:
    root = tmp_path_factory.mktemp("wildcards")
    (root / "models" / "Lora").mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", root / "models" / "tiny-sd1.safetensors")
    shutil.copy(tiny_loras / "lora-sd1.safetensors", root / "models" / "Lora" / "lora-sd1.safetensors")
    files = {"colour": "red\nblue\ngreen\ngold", "bad": "forbidden", "young": "a child", "look": "<lora:lora-sd1:1>\nplain"}
    wildcards = folder(root, files)
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, root / "models")
    await registry.scan()
    loras = LoraRegistry(db, root / "models")
    await loras.scan()
    generation = GenerationService(db, [], Limits())  # never started: plans need no worker
    settings = GuildSettings(db, registry, ["forbidden"], Limits())
    yield Jobs(registry, generation, settings, loras, wildcards=WildcardLibrary([wildcards]))
    await db.close()


SERVER = Place(guild_id="5", channel_id="6")


@pytest.mark.asyncio(loop_scope="module")
async def test_each_picture_of_a_job_gets_its_own_prompt_from_its_seed(jobs: Jobs) -> None:
    options = ImagineOptions.of(prompt="a __colour__ fox", checkpoint="tiny-sd1", count=4, seed=20, negative="{dull|flat}")
    [spec] = (await jobs.plan_imagine(Asker("a", "a"), SERVER, options)).specs
    assert spec.seeds == (20, 21, 22, 23) and spec.parameters.prompt == "a __colour__ fox"  # the template is kept
    wildcards = jobs.wildcards
    assert wildcards is not None
    assert list(spec.prompts) == wildcards.current().expand("a __colour__ fox", [20, 21, 22, 23])
    assert set(spec.negatives) <= {"dull", "flat"}
    again = (await jobs.plan_imagine(Asker("a", "a"), SERVER, options)).specs[0]
    assert again.prompts == spec.prompts  # the same seed, the same prompts
    drawn = (await jobs.plan_imagine(Asker("a", "a"), SERVER, ImagineOptions.of(prompt="a __colour__ fox", checkpoint="tiny-sd1"))).specs[0]
    assert drawn.parameters.seed >= 0 and len(drawn.prompts) == 1  # a random seed is drawn first, then the prompt


@pytest.mark.asyncio(loop_scope="module")
async def test_every_rule_reads_the_expansion_and_refuses_in_one_line(jobs: Jobs) -> None:
    for prompt, message in (
        ("a __bad__ fox", "a word this server does not allow"),
        ("__young__ on a beach, nude", "cannot be generated here or anywhere"),  # the minors rule
        ("a fox, __look__", "the wildcards chose different LoRAs for this job's pictures"),
        ("a __nope__ fox", "no wildcard named __nope__"),
    ):
        with pytest.raises(EaselError, match=message):
            await jobs.plan_imagine(Asker("a", "a"), SERVER, ImagineOptions.of(prompt=prompt, checkpoint="tiny-sd1", count=4, seed=3))
    one = ImagineOptions.of(prompt="a fox, __look__", checkpoint="tiny-sd1", count=1, seed=1)
    [spec] = (await jobs.plan_imagine(Asker("a", "a"), SERVER, one)).specs  # one picture: its own LoRAs, if any
    assert [lora.name for lora in spec.loras] == (["lora-sd1"] if "<lora:" in spec.prompts[0] else [])


def test_the_wildcards_command_lists_them_and_a_files_lines(env: Path, cli) -> None:
    folder(env / "models", {"animals": "cat\ndog", "loop": "__loop__"})
    listed = cli("wildcards", "list")
    assert listed.code == 0 and "__animals__  (2 lines)" in listed.out and "__loop__  refused: it leads back to itself" in listed.out
    assert cli("wildcards", "list", "animals").out.split() == ["cat", "dog"]
    explained = cli("prompt", "explain", "a __animals__ in {rain|snow}", "--seed", "5")
    expected = read_wildcards([env / "models" / "wildcards"]).expand("a __animals__ in {rain|snow}", [5])[0]
    assert explained.code == 0 and f"with seed 5: {expected}" in explained.out, explained.err
    missing = cli("wildcards", "list", "../etc/passwd")
    assert missing.code == 1 and missing.err.strip() == "error: no wildcard named __../etc/passwd__; `wildcards list` shows them"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_pasted_infotexts_prompt_is_drawn_as_written(jobs: Jobs) -> None:
    """A picture's parameters carry its expansion: braces left in it are A1111's text, not variants."""
    from bot.images.infotext import Infotext

    info = Infotext("a {red|blue} fox", "", {"Model": "tiny-sd1", "Steps": "3", "Seed": "5", "Size-1": "64", "Size-2": "64"})
    [spec] = (await jobs.plan_from_infotext(Asker("a", "a"), SERVER, info)).specs
    assert spec.parameters.prompt == "a {red|blue} fox" and spec.prompts == () and not spec.parameters.dynamic


def test_a_folder_with_too_many_files_is_read_to_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.wildcards as module

    monkeypatch.setattr(module, "MAX_FILES", 3)
    found = read_wildcards([folder(tmp_path, {f"w{i}": "x" for i in range(6)})])
    assert len(found.values) == 3 and list(found.refused.values()) == ["more than 3 wildcard files"]
