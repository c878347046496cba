"""Infotext written by Easel reads back to the same values with A1111's own reader (test data)."""

from __future__ import annotations

import pytest

from gpu_worker.infotext import build_infotext
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
