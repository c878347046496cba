"""Regional prompting as the Regional Prompter reads it: its settings, the regions a prompt and a
divide ratio make, the picture's keys, and the attention that keeps each region's prompt in its region.
The pictures themselves: tests/test_demo_model.py (each half where its prompt asks) and
tests/test_discord.py (SDXL, the hires fix, "Make this here")."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, SlicedAttnProcessor

from bot.generation.prompt_explain import _tokenizer, explain, render
from bot.rules.limits import GenerationRequest, Limits, validate
from common.parameters import Parameters
from common.prompt_chunks import chunk_prompt
from common.regions import (
    Cell,
    RegionError,
    RegionSettings,
    active,
    check,
    from_infotext,
    infotext_pairs,
    plan,
)
from gpu_worker.regional_attention import (
    RegionalAttention,
    RegionalProcessor,
    RowLayout,
    negative_layout,
    row_layout,
)
from tests.helpers import checkpoint_ref


def boxes(prompt: str, ratios: str = "1,1", negative: str = "") -> list[tuple[float, float, float, float, int]]:
    """(left, right, top, bottom, parts) of each region, rounded to percent."""
    made = plan(prompt, negative, RegionSettings.parse(ratios))
    return [(round(c.left * 100), round(c.right * 100), round(c.top * 100), round(c.bottom * 100), c.parts) for c in made.cells]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("1,1", "1,1"),
        ("1, 2 ;1", "1,2;1"),
        ("rows 1,2", "1,2 rows"),
        ("1,1 Columns base", "1,1 base"),
        ("1,1 base 0.35 common ncommon", "1,1 base 0.35 common ncommon"),
        ("base=0.2,0.4 1,1", "1,1 base 0.2,0.4"),
        ("", "1,1"),
    ],
)
def test_the_settings_read_as_written_and_have_one_canonical_form(text: str, canonical: str) -> None:
    settings = RegionSettings.parse(text)
    assert settings.text() == canonical and RegionSettings.parse(canonical) == settings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,1 sideways", "'sideways' is not understood"),
        ("1,,1", "has an empty place"),
        ("1,x", "'1,x' is not understood"),
        ("0,1", "divide ratios are positive numbers, not 0"),
        ("1,1 base 2", "base ratios are between 0 and 1, not 2"),
        ("1,1 1,2", "'1,2' is not understood"),
        ("1," * 150, "at most 200 characters"),
    ],
)
def test_bad_settings_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(RegionError, match=message.replace("(", r"\(")):
        RegionSettings.parse(text)


def test_the_regions_follow_the_readme_examples() -> None:
    # The extension's README, 2D regions: rows of 1:2 (by `;`), their columns 2:1:1 and 4:6.
    prompt = "(blue sky:1.2) ADDCOL green hair twintail ADDCOL (aquarium:1.3) ADDROW (messy desk:1.2) ADDCOL orange dress"
    assert boxes(prompt, "1,2,1,1;2,4,6") == [
        (0, 50, 0, 33, 1), (50, 75, 0, 33, 1), (75, 100, 0, 33, 1), (0, 40, 33, 100, 1), (40, 100, 33, 100, 1)
    ]  # fmt: skip
    # One kind of key and a ratio without `;`: one row of columns, or (Rows) one column of rows.
    assert boxes("a ADDCOL b ADDCOL c", "1,2,1") == [(0, 25, 0, 100, 1), (25, 75, 0, 100, 1), (75, 100, 0, 100, 1)]
    assert boxes("a ADDROW b", "1,3") == [(0, 100, 0, 25, 1), (0, 100, 25, 100, 1)]
    assert boxes("a ADDROW b", "1,3 rows") == [(0, 100, 0, 25, 1), (0, 100, 25, 100, 1)]
    assert boxes("a ADDCOL b", "1,3 rows") == [(0, 25, 0, 100, 1), (25, 100, 0, 100, 1)]
    # Rows: columns first, each split into rows; the prompt's parts go column by column.
    assert boxes("a ADDROW b ADDCOL c", "1,1,1;1 rows") == [(0, 50, 0, 50, 1), (0, 50, 50, 100, 1), (50, 100, 0, 100, 1)]
    # Too few numbers repeat the last; too many are ignored; the prompt's keys decide how many regions.
    assert boxes("a ADDCOL b ADDCOL c", "1,2") == [(0, 20, 0, 100, 1), (20, 60, 0, 100, 1), (60, 100, 0, 100, 1)]
    assert boxes("a ADDCOL b", "1,1,1,1") == [(0, 50, 0, 100, 1), (50, 100, 0, 100, 1)]


def test_breaks_become_the_templates_keys_and_the_rest_stay_within_their_region() -> None:
    assert boxes("a BREAK b", "1,1") == [(0, 50, 0, 100, 1), (50, 100, 0, 100, 1)]
    # "1,2;1": the template is ADDCOL then ADDROW, first BREAK first.
    assert boxes("a BREAK b BREAK c", "1,2,1;1") == [(0, 67, 0, 50, 1), (67, 100, 0, 50, 1), (0, 100, 50, 100, 1)]
    # A BREAK the template does not reach stays a BREAK: its region reads both parts.
    assert boxes("a ADDCOL b BREAK c BREAK d", "1,1") == [(0, 33, 0, 100, 1), (33, 67, 0, 100, 1), (67, 100, 0, 100, 2)]


def test_the_texts_the_model_reads() -> None:
    made = plan("best quality ADDCOMM red hair ADDCOL green dress", "ugly ADDCOMM blur BREAK haze", RegionSettings())
    assert (made.prompt, made.negative) == ("best quality, red hair BREAK best quality, green dress", "ugly, blur BREAK ugly, haze")
    assert made.settings.common and made.settings.ncommon and not made.base
    based = plan("a girl ADDBASE red hair ADDCOL green dress ADDCOL", "", RegionSettings())
    assert based.base and based.prompt == "a girl BREAK red hair BREAK green dress BREAK _"  # a blank last region reads "_"
    assert based.parts == 4
    # With regions on, AND is a BREAK (the extension's default), as a word only.
    anded = plan("an ANDROID AND a cat ADDCOL a dog", "", RegionSettings())
    assert anded.prompt == "an ANDROID BREAK a cat BREAK a dog" and len(anded.cells) == 3
    # The base flag without a base part, or a prompt with no separators: refused by name.
    with pytest.raises(RegionError, match=r"the prompt has 2 parts, and 3 are needed \(the base prompt first"):
        plan("a ADDCOL b", "", RegionSettings.parse("1,1 base"))
    with pytest.raises(RegionError, match="separate the regions' prompts with ADDCOL or ADDROW"):
        plan("a cat", "", RegionSettings())
    assert boxes("a cat BREAK snow", "1") == [(0, 100, 0, 100, 2)]  # one number: one region, all of it
    with pytest.raises(RegionError, match="at most 16 regions, not 17"):
        plan(" ADDCOL ".join("x" * 17), "", RegionSettings())
    # Prompt editing that takes a part away at some step.
    with pytest.raises(RegionError, match="at some step the prompt has 1 parts, and 2 are needed"):
        check("[a ADDCOL b:c:5]", "", RegionSettings(), 20)


def test_regions_are_on_when_asked_for_or_placed_in_the_prompt() -> None:
    assert active("a ADDCOL b", "") and active("a ADDROW b", "") and active("a cat", "1,1")
    assert not active("a BREAK b ADDCOMM c", "") and not active("ADDCOLOUR", "")


def test_the_picture_carries_the_extensions_keys_and_they_read_back() -> None:
    settings = RegionSettings.parse("1,2;1 rows base 0.3 common")
    pairs = infotext_pairs(settings)
    assert pairs["RP Active"] == "True" and pairs["RP Matrix submode"] == "Rows" and pairs["RP Ratios"] == "1,2;1"
    assert (pairs["RP Use Base"], pairs["RP Base Ratios"], pairs["RP Use Common"]) == ("True", "0.3", "True")
    assert from_infotext(pairs) == settings.text()
    assert from_infotext(pairs | {"RP Flip": "True"}) == "1;2,1 rows base 0.3 common"  # `,` and `;` swapped
    assert from_infotext(pairs | {"RP Active": "False"}) == "" and from_infotext({}) == ""
    for key, value, message in (
        ("RP Divide mode", "Mask", "Regional Prompter's Mask mode"),
        ("RP Calc Mode", "Latent", "Regional Prompter's Latent mode"),
        ("RP Matrix submode", "Random", "Random submode"),
        ("RP Ratios", "1,a", "has 'a' where a number goes"),
    ):
        with pytest.raises(RegionError, match=message):
            from_infotext(pairs | {key: value})


def test_the_bot_refuses_regions_where_they_cannot_draw_and_keeps_the_canonical_settings() -> None:
    def validated(prompt: str, regions: str, **ref: object) -> Parameters:
        request = GenerationRequest(Parameters(prompt=prompt, regions=regions, steps=4), "alice")
        return validate(request, checkpoint_ref(**ref), Limits()).parameters

    assert validated("a ADDCOL b", "").regions == "1,1"  # placed in the prompt: the extension's default ratio
    assert validated("a ADDCOL b", "rows 2,1").regions == "2,1 rows"
    assert validated("a cat", "").regions == ""
    with pytest.raises(RegionError, match="separate the regions' prompts"):
        validated("a cat", "1,1")
    with pytest.raises(Exception, match="regional prompting works on SD1, SD2 and SDXL checkpoints only"):
        validated("a ADDCOL b", "", family="flux", pipeline_config="flux-dev", name="tiny-flux")


def test_explain_shows_the_regions_and_what_each_reads() -> None:
    lines = render(explain("a castle ADDBASE sky ADDROW lake ADDCOL boat", 20, regions="1,2;3,1,1 base 0.4"))
    assert lines[0] == "regions (1,2;3,1,1 base 0.4), each reading its own chunks:"
    assert lines[2:4] == ["  111111111111111111111111", "  222222222222333333333333"]  # 2 of 8 rows, then 6
    assert "  1: 0-100% across, 0-25% down, base 0.4: sky" in lines
    assert "  3: 50-100% across, 25-100% down, base 0.4: boat" in lines
    assert "4 chunk(s) of 75 tokens; 5 tokens used" in lines  # base and three regions, a chunk each


def test_each_region_reads_its_own_chunks_and_the_negative_is_split_only_when_it_matches() -> None:
    tokenizer = _tokenizer()
    long = ", ".join(["red hair"] * 40)  # 119 tokens: two chunks
    made = plan(f"a castle ADDBASE {long} ADDCOL boat", "", RegionSettings())
    chunks = chunk_prompt(made.prompt, tokenizer)
    layout = row_layout(chunks, made)
    assert layout.base == (0, 77) and [(s, e) for _, s, e in layout.cells] == [(77, 231), (231, 308)]
    assert negative_layout(chunk_prompt("fog", tokenizer), chunks, made) is None  # one part: read whole
    split = chunk_prompt(f"fog BREAK {long} BREAK rain", tokenizer)
    assert negative_layout(split, chunks, made) == layout
    short = chunk_prompt("fog BREAK mist BREAK rain", tokenizer)  # as many parts, fewer chunks: whole
    assert negative_layout(short, chunks, made) is None


def test_a_layers_grid_is_the_latent_halved_rounding_up() -> None:
    state = RegionalAttention((9, 7))
    assert [state.grid(n) for n in (63, 20, 6, 2, 1)] == [(9, 7), (5, 4), (3, 2), (2, 1), (1, 1)]
    with pytest.raises(RuntimeError, match="no grid"):
        state.grid(7)
    state.set([None, None], [None, None])
    assert len(state.rows(4)) == 4 and len(state.rows(2)) == 2
    with pytest.raises(RuntimeError, match="3 rows for 2 pictures"):
        state.rows(3)


@pytest.mark.parametrize("inner", [AttnProcessor2_0(), SlicedAttnProcessor(slice_size=1)], ids=["sdpa", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_each_region_attends_to_its_tokens_inside_it_and_the_base_is_mixed_in(inner, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).to(device="cpu", dtype=dtype)
    attn.set_processor(inner)
    hidden = torch.randn(2, 16, 8, device="cpu", dtype=dtype)  # an unguided and a guided row, 4x4 places
    context = torch.randn(2, 3 * 77, 6, device="cpu", dtype=dtype)
    left, right = Cell(0, 1, 0, 0.5, 1, 0.25), Cell(0, 1, 0.5, 1, 1, 0.25)
    layout = RowLayout(((left, 77, 154), (right, 154, 231)), base=(0, 77))
    state = RegionalAttention((4, 4))
    state.set([layout], [None])  # the negative (first row) read whole
    out = RegionalProcessor(inner, state)(attn, hidden, encoder_hidden_states=context)

    def plain(row: int, start: int, end: int) -> torch.Tensor:
        return inner(attn, hidden[row : row + 1], encoder_hidden_states=context[row : row + 1, start:end])[0]

    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out[0], plain(0, 0, 231), **tolerance)
    base = plain(1, 0, 77)
    expected_left, expected_right = plain(1, 77, 154) * 0.75 + base * 0.25, plain(1, 154, 231) * 0.75 + base * 0.25
    grid = out[1].reshape(4, 4, -1)
    torch.testing.assert_close(grid[:, :2], expected_left.reshape(4, 4, -1)[:, :2], **tolerance)
    torch.testing.assert_close(grid[:, 2:], expected_right.reshape(4, 4, -1)[:, 2:], **tolerance)
    assert out.dtype == dtype and out.device.type == "cpu"
