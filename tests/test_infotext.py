"""Infotext written by Easel reads back to the same values with A1111's own reader (test data)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.catalog.civitai import _strip_html
from bot.catalog.ranking import without_xl
from bot.catalog.sources import trailing_version
from bot.images.infotext import parameter_pairs
from bot.images.infotext import parse_infotext as easel_parse_infotext
from common.infotext import build_infotext
from tests.a1111_infotext import parse_generation_parameters as parse_infotext

CASES = [
    ("a cat", "", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 1, "Size": "512x512"}),
    (
        "masterpiece, (best quality:1.2), 1girl\nsecond line",
        "blurry, lowres\nbad hands",
        {"Steps": 30, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5, "Seed": 4294967293},
    ),
    ("ünïcødé 🐱", "", {"Steps": 1, "Model": 'odd, "quoted": name', "Model hash": "abcdef1234", "Seed": 0}),
]


@pytest.mark.parametrize("prompt,negative,params", CASES)
def test_round_trip_through_a1111_parser(prompt: str, negative: str, params: dict) -> None:
    text = build_infotext(prompt, negative, params)
    parsed_prompt, parsed_negative, parsed = parse_infotext(text)
    assert parsed_prompt == prompt
    assert parsed_negative == negative
    expected = {k: str(v) for k, v in params.items() if k != "Size"}
    if "Size" in params:  # A1111 reads "WxH" as two values
        expected["Size-1"], expected["Size-2"] = str(params["Size"]).split("x")
    assert parsed == expected


def test_layout_and_order() -> None:
    text = build_infotext(
        "p",
        "",
        {
            "Model": "m",
            "Seed": 5,
            "Version": "Easel",
            "Steps": 2,
            "Size": "64x64",
            "Sampler": "Euler",
            "CFG scale": 7,
            "Clip skip": None,
        },
    )
    assert text == "p\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Model: m, Version: Easel"
    assert "Negative prompt" not in text  # omitted when empty


# --- attacker-written text read in linear time, exactly as the patterns it replaced read it -----------

A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # modules/infotext_utils.py
VERSION = re.compile(r"(?:[_ .-]?v?\d+(?:\.\d+)*[a-z]?\d*)+$")  # what trailing_version replaced


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet='ab :,"\\-/\té_1٣', max_size=40))
def test_infotext_pairs_are_a1111s(line: str) -> None:
    assert parameter_pairs(line) == A1111_PARAM.findall(line)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="12v.a_ -xb9٣", max_size=12))
def test_a_trailing_version_is_what_the_pattern_found(name: str) -> None:
    found = VERSION.search(name)
    assert trailing_version(name) == (len(name) - found.start() if found else 0)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="<>a \n", max_size=30), st.text(alphabet="xXlL _-\ta", max_size=12))
def test_tags_and_xl_are_stripped_as_the_patterns_did(html: str, name: str) -> None:
    assert _strip_html(html) == re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()
    assert without_xl(name) == re.sub(r"[\s_-]*xl$", "", name, flags=re.IGNORECASE)


def test_the_lines_that_made_the_patterns_backtrack_are_read() -> None:
    """Each took seconds to minutes with the old patterns (quadratic or exponential backtracking);
    read in one pass now, with the same answers."""
    line = "x" * 20_000  # a last line without ":" (2.3-4 s for /pnginfo before)
    info = easel_parse_infotext(f"a cat\n{line}")
    assert info.params == {} and info.prompt.endswith("x" * 100)
    assert trailing_version("1" * 22 + "!") == 0 and trailing_version("model_v" + "1" * 5000) == 5002
    assert _strip_html("<" * 100_000) == "<" * 100_000
    assert without_xl("x" + " " * 100_000 + "y") == "x" + " " * 100_000 + "y"
