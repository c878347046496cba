"""Output safety: the picture check's wiring, the rules that act on its scores, and the minors rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from bot.errors import EaselError
from bot.generation.minors import check_minors
from bot.generation.policy import picture_verdict
from gpu_worker.safety import EXPOSED, NudityScorer


def test_the_real_detector_scores_harmless_pictures_low() -> None:
    scorer = NudityScorer()
    landscape = Image.new("RGB", (768, 512), (90, 140, 220))
    draw = ImageDraw.Draw(landscape)
    draw.rectangle((0, 330, 768, 512), fill=(40, 120, 40))
    draw.ellipse((560, 60, 660, 160), fill=(250, 220, 80))
    for picture in (landscape, Image.new("RGB", (64, 64), (128, 128, 128))):
        scores = scorer.score(picture)
        assert scores.score < 0.2 and set(scores.labels) <= set(EXPOSED)


@pytest.mark.parametrize(
    ("score", "action", "adult_action", "adult", "expected"),
    [
        (0.49, "withhold", "allow", False, "post"),  # under the threshold: posted anywhere
        (0.5, "withhold", "allow", False, "withhold"),
        (0.9, "spoiler", "allow", False, "spoiler"),
        (0.9, "withhold", "allow", True, "post"),  # an age-restricted channel or a DM
        (0.9, "withhold", "spoiler", True, "spoiler"),
        (0.9, "spoiler", "withhold", True, "withhold"),
    ],
)
def test_what_a_place_does_with_a_score(score: float, action: str, adult_action: str, adult: bool, expected: str) -> None:
    assert picture_verdict(score, 0.5, action, adult_action, adult) == expected


async def test_the_servers_picture_rules_are_checked(tmp_path: Path) -> None:
    from bot.checkpoints.registry import CheckpointRegistry
    from bot.db import open_database
    from bot.generation.requests import Limits
    from bot.guilds.settings import GuildSettings, SettingsError

    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        store = GuildSettings(db, CheckpointRegistry(db, tmp_path), [], Limits(), pictures=("spoiler", "allow", 0.6))
        here = await store.effective("g", "c")
        assert (here.nsfw_pictures, here.nsfw_pictures_adult, here.nsfw_threshold) == ("spoiler", "allow", 0.6)
        for changes, message in (
            ({"nsfw_pictures": "allow"}, "nsfw_pictures must be one of withhold, spoiler"),
            ({"nsfw_pictures_adult": "hide"}, "nsfw_pictures_adult must be one of allow, spoiler, withhold"),
            ({"nsfw_threshold": 2}, "between 0 and 1"),
            ({"nsfw_threshold": "much"}, "must be a number"),
        ):
            with pytest.raises(SettingsError, match=message):
                await store.update("g", None, changes)
        await store.update("g", None, {"nsfw_pictures": "withhold", "nsfw_threshold": "0.3"})
        here = await store.effective("g", "c")
        assert (here.picture_verdict(0.35, False), here.picture_verdict(0.35, True)) == ("withhold", "post")
        await store.update("g", "c", {"nsfw_pictures": "spoiler"})  # one channel may choose for itself
        here, elsewhere = await store.effective("g", "c"), await store.effective("g", "d")
        assert (here.nsfw_pictures, here.sources["nsfw_pictures"], elsewhere.nsfw_pictures) == ("spoiler", "channel", "withhold")
        with pytest.raises(SettingsError, match="max_steps is a server-wide setting"):
            await store.update("g", "c", {"max_steps": 5})
    finally:
        await db.close()


REFUSED = [
    "a nude loli",
    "NUDE LOLI",
    "a n u d e l o l i",
    "N.U.D.E. l.o.l.i",
    "nud3 l0l1",
    "n*u*d*e shota",
    "a 12yo girl, naked",
    "12 year old in lingerie",
    "a 9-year-old, topless",
    "sexy t33n",
    "hentai, (loli:1.3)",
    "nsfw_loli",
    "loooooli lewd",
    "Ｌｏｌｉ ｎｕｄｅ",  # full-width letters
    "a young girl, explicit",
    "kid, erotic",
]
ALLOWED = [
    "a nude woman on a beach, oil painting",
    "a kid playing football in the park",
    "26 year old woman, sexy evening dress",
    "a 12 year old boy riding a bike",
    "a child reading a book",
    "a person from essex",
    "n u d e",  # one of the two alone
]


@pytest.mark.parametrize("prompt", REFUSED)
def test_minors_with_sexual_terms_are_refused_however_written(prompt: str) -> None:
    with pytest.raises(EaselError, match="cannot be generated here or anywhere"):
        check_minors([prompt])


@pytest.mark.parametrize("prompt", ALLOWED)
def test_one_without_the_other_is_not_refused(prompt: str) -> None:
    check_minors([prompt])


def test_owners_can_add_words_but_not_remove_them() -> None:
    check_minors(["a fawn, frolicking"])
    with pytest.raises(EaselError):
        check_minors(["a fawn, frolicking"], extra_minor=["fawn"], extra_sexual=["frolicking"])
    with pytest.raises(EaselError):
        check_minors(["a nude loli"], extra_minor=[], extra_sexual=[])


def test_the_cli_scores_a_picture(cli, tmp_path: Path) -> None:
    Image.new("RGB", (96, 64), (20, 200, 40)).save(tmp_path / "green.jpg")
    done = cli("safety", "check", str(tmp_path / "green.jpg"))
    assert done.code == 0 and "score 0.00" in done.out and "post in ordinary channels" in done.out
    refused = cli("safety", "check", str(tmp_path / "missing.png"))
    assert refused.code == 1 and "No such file" in refused.err
