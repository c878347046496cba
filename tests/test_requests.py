"""Request validation: each bad value gets its own clear message; good ones are resolved."""

from __future__ import annotations

import pytest

from bot.rules.limits import GenerationError, GenerationRequest, Limits, parse_size, validate
from common.samplers import SAMPLERS, parse_sampler
from tests.helpers import checkpoint_ref


def check(**changes) -> object:
    request = GenerationRequest.of(**({"prompt": "a cat", "requester_id": "u"} | changes))
    return validate(request, checkpoint_ref(), Limits())


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"width": 100}, "width 100 is not a multiple of 8"),
        ({"height": 4096}, "height 4096 is outside 64-2048"),
        ({"width": 2048, "height": 2048, "count": 1}, None),
        ({"width": 2048, "height": 2048 + 8}, "outside"),
        ({"steps": 0}, "steps must be between 1 and 150"),
        ({"cfg": 31.0}, "CFG scale must be between 0 and 30"),
        ({"count": 9}, "count must be between 1 and 8"),
        ({"clip_skip": 0}, "clip skip must be between"),
        ({"seed": -2}, "seed must be -1"),
        ({"sampler": "Foo"}, "unknown sampler 'Foo'"),
        ({"sampler": "DDIM", "schedule": "Karras"}, "does not support the 'Karras' schedule"),
            ({"sampler": "Euler a", "schedule": "Sigmoid"}, "does not support the 'Sigmoid' schedule"),
    ],
)
def test_bad_values(changes: dict, message: str | None) -> None:
    if message is None:
        check(**changes)
        return
    with pytest.raises(GenerationError, match=message):
        check(**changes)


def test_checkpoint_must_be_runnable_and_present() -> None:
    request = GenerationRequest.of(prompt="a", requester_id="u")
    with pytest.raises(GenerationError, match="cannot be run: Flux"):
        validate(request, checkpoint_ref(runnable=False, reason="Flux checkpoints are not supported yet"), Limits())
    with pytest.raises(GenerationError, match="missing from the models directory"):
        validate(request, checkpoint_ref(present=False), Limits())


def test_resolution_of_defaults() -> None:
    spec = check(seed=10, count=3)
    assert spec.seeds == (10, 11, 12)  # A1111: one seed per image, counting up
    assert (spec.width, spec.height) == (64, 64)  # the tiny config's native size
    assert (spec.parameters.sampler, spec.parameters.schedule) == ("DPM++ 2M", "Karras")
    random_spec = check()
    assert 0 <= random_spec.seeds[0] < 2**32
    sdxl = validate(
        GenerationRequest.of(prompt="a", requester_id="u"), checkpoint_ref(pipeline_config="sdxl", family="sdxl"), Limits()
    )
    assert (sdxl.width, sdxl.height) == (1024, 1024)


def test_sampler_names() -> None:
    assert parse_sampler("dpm++ 2m karras") == ("DPM++ 2M", "Karras")  # A1111's old combined names
    assert parse_sampler("Euler a") == ("Euler a", "Automatic")
    assert parse_sampler("Euler", "exponential") == ("Euler", "Exponential")
    assert set(SAMPLERS) >= {
        "Euler",
        "Euler a",
        "Heun",
        "LMS",
        "DPM2",
        "DPM2 a",
        "DPM++ 2M",
        "DPM++ 2M SDE",
        "DPM++ SDE",
        "DDIM",
        "UniPC",
    }


def test_parse_size() -> None:
    assert parse_size("512x768") == (512, 768)
    with pytest.raises(GenerationError, match="WIDTHxHEIGHT"):
        parse_size("big")


def test_prompt_block_list_matches_whole_words() -> None:
    from bot.rules.policy import check_prompt

    check_prompt("concatenate the scatter plot", ["cat"])  # not a whole word
    with pytest.raises(GenerationError, match="does not allow"):
        check_prompt("A Cat on a mat", ["cat"])
    with pytest.raises(GenerationError, match="does not allow"):
        check_prompt("red hat, blue sky", ["blue sky"])
    check_prompt("anything", [" ", ""])


def test_nsfw_checkpoints_need_an_allowed_place() -> None:
    from bot.rules.policy import check_nsfw

    check_nsfw("m", False, False)
    check_nsfw("m", True, True)
    with pytest.raises(GenerationError, match="m is marked NSFW: use it in an age-restricted channel or in DMs"):
        check_nsfw("m", True, False)
