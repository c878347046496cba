"""Prompts read as A1111 reads them: the parser (pure) and the worker's embeddings on tiny checkpoints."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.prompt_chunks import CHUNK, chunk_prompt
from common.prompt_syntax import extract_extra_networks, parse_attention
from common.protocol import JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.prompt_encoding import encode_prompts
from gpu_worker.runner import BatchRunner

# A NaN anywhere in a picture shows as diffusers' "invalid value encountered in cast": fail on it.
pytestmark = pytest.mark.filterwarnings("error:invalid value encountered in cast:RuntimeWarning")

# --- the parser: A1111's own doctests (modules/prompt_parser.py parse_prompt_attention), then more --

A1111_DOCTESTS = {
    "normal text": [("normal text", 1.0)],
    "an (important) word": [("an ", 1.0), ("important", 1.1), (" word", 1.0)],
    "(unbalanced": [("unbalanced", 1.1)],
    "\\(literal\\]": [("(literal]", 1.0)],
    "(unnecessary)(parens)": [("unnecessaryparens", 1.1)],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ("a ", 1.0),
        ("house", 1.5730000000000004),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641000000000006),
        (".", 1.1),
    ],
}
MORE = {
    "((best quality))": [("best quality", 1.2100000000000002)],
    "[blurry]": [("blurry", 1 / 1.1)],
    "[[x]]": [("x", 1 / 1.1 / 1.1)],
    "(zero:0)": [("zero", 0.0)],
    "(neg:-1.5)": [("neg", -1.5)],
    "(spaced : 1.2 )": [("spaced ", 1.2)],
    "\\\\ and \\(x\\)": [("\\ and (x)", 1.0)],
    "a:b": [("a:b", 1.0)],
    "unclosed]": [("unclosed]", 1.0)],
    "(a [b] c)": [("a ", 1.1), ("b", 1.0), (" c", 1.1)],
    "a BREAK b": [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)],
    "a break b": [("a break b", 1.0)],
    "": [("", 1.0)],
}


@pytest.mark.parametrize(("text", "expected"), list(A1111_DOCTESTS.items()) + list(MORE.items()))
def test_attention(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_attention(text) == expected


def test_extra_network_tags_are_taken_out() -> None:
    text, tags = extract_extra_networks("a fox <lora:fluffy:0.8>, <hypernet:old> forest <lyco:x:1:0.5>")
    assert text == "a fox ,  forest "
    assert [(t.kind, t.name, t.multiplier) for t in tags] == [
        ("lora", "fluffy", 0.8),
        ("hypernet", "old", 1.0),
        ("lyco", "x", 1.0),
    ]


# A1111's doctests of get_learned_conditioning_prompt_schedules (modules/prompt_parser.py), 10 steps.
# Left out: 'a [{b|d{:.5] c', which A1111 marks "not handling this right now".
A1111_SCHEDULES = {
    "test": [(10, "test")],
    "a [b:3]": [(3, "a "), (10, "a b")],
    "a [b: 3]": [(3, "a "), (10, "a b")],
    "a [[[b]]:2]": [(2, "a "), (10, "a [[b]]")],
    "[(a:2):3]": [(3, ""), (10, "(a:2)")],
    "a [b : c : 1] d": [(1, "a b  d"), (10, "a  c  d")],
    "a[b:[c:d:2]:1]e": [(1, "abe"), (2, "ace"), (10, "ade")],
    "a [unbalanced": [(10, "a [unbalanced")],
    "a [b:.5] c": [(5, "a  c"), (10, "a b c")],
    "((a][:b:c [d:3]": [(3, "((a][:b:c "), (10, "((a][:b:c d")],
    "[a|(b:1.1)]": [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)],
    # more: removal, escapes, a decimal step, a when past the end, lookalikes left as they are
    "a [b::0.3] c": [(3, "a b c"), (10, "a  c")],
    "\\[b:c:2\\]": [(10, "\\[b:c:2\\]")],
    "[b:c:5.0]": [(10, "b")],
    "[b:c:99]": [(10, "b")],
    "[a:b] (c:1.2) [d]": [(10, "[a:b] (c:1.2) [d]")],
    "[a||b]": [(step, ("a", "", "b")[(step - 1) % 3]) for step in range(1, 11)],
}


@pytest.mark.parametrize(("text", "expected"), list(A1111_SCHEDULES.items()))
def test_schedules(text: str, expected: list[tuple[int, str]]) -> None:
    from common.prompt_schedule import prompt_schedule

    assert prompt_schedule(text, 10) == expected


def test_the_hires_passs_schedule_counts_from_pass_ones_start() -> None:
    """A1111 1.8+ (`get_learned_conditioning_prompt_schedules` with hires steps): whole numbers count
    from pass one's start, fractions past 1 reach into pass two; pass one here has 20 steps, pass two 10."""
    from common.prompt_schedule import prompt_schedule

    assert prompt_schedule("[a:b:10]", 20, 10) == [(10, "b")]  # switched before pass two began
    assert prompt_schedule("[a:b:25]", 20, 10) == [(5, "a"), (10, "b")]
    assert prompt_schedule("[a:b:1.5]", 20, 10) == [(5, "a"), (10, "b")]
    assert prompt_schedule("[a:b:0.5]", 20, 10) == [(10, "b")]
    assert prompt_schedule("[a:b:25]", 20) == [(20, "a")]  # pass one alone never reaches 25


def test_schedule_parsing_is_linear_and_nesting_is_bounded() -> None:
    from common.errors import EaselError
    from common.prompt_schedule import prompt_schedule

    # A1111's Earley grammar takes minutes on this; a parser that backtracked would hang the suite.
    schedule = prompt_schedule("(a:1.1) [b] [c:d:0.5] [e|f] " * 280, 30)
    assert len(schedule) == 30 and schedule[0][1].startswith("(a:1.1) [b] c e")
    with pytest.raises(EaselError, match="nests brackets more than 64 deep"):
        prompt_schedule("[a:" * 200, 20)


# --- chunks, with the real CLIP tokenizer bundled for SD1 ---------------------------------------------


@pytest.fixture(scope="module")
def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(Path("common/configs/sd1/tokenizer").resolve()))


def test_a_long_prompt_is_cut_into_77_token_chunks_at_a_comma(clip_tokenizer) -> None:
    words = ", ".join(f"word{i}" for i in range(60))  # ~180 tokens with commas
    chunks = chunk_prompt(words, clip_tokenizer)
    assert len(chunks) >= 3 and all(len(c.tokens) == CHUNK + 2 == len(c.weights) for c in chunks)
    comma = clip_tokenizer.get_vocab()[",</w>"]
    eos = clip_tokenizer.eos_token_id
    bodies = [[t for t in c.tokens[1:-1] if t != eos] for c in chunks]
    assert [t for body in bodies for t in body] == clip_tokenizer(words, add_special_tokens=False)["input_ids"]
    cut_early = [body for body in bodies[:-1] if len(body) < CHUNK]
    assert cut_early and all(body[-1] == comma and len(body) >= CHUNK - 20 for body in cut_early)


def test_break_starts_a_new_chunk_and_weights_follow_tokens(clip_tokenizer) -> None:
    chunks = chunk_prompt("a (fox:1.5) BREAK a dog", clip_tokenizer)
    assert len(chunks) == 2
    fox = clip_tokenizer("fox", add_special_tokens=False)["input_ids"][0]
    assert chunks[0].weights[chunks[0].tokens.index(fox)] == 1.5
    assert chunks[0].tokens[0] == clip_tokenizer.bos_token_id and chunks[0].tokens[-1] == clip_tokenizer.eos_token_id


# --- embeddings and pictures on tiny checkpoints --------------------------------------------------


def load_request(tiny_dir: Path, arch: str) -> LoadRequest:
    path = tiny_dir / f"tiny-{arch}.safetensors"
    ins = inspect_file(path)
    return LoadRequest(
        str(path), f"tiny-{arch}", arch, ins.architecture.label, "safetensors", ins.pipeline_config,
        ins.architecture.prediction, arch * 8,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache("cpu", 1 << 30, 0, lambda request: load_pipeline(request, "cpu"))


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_a_plain_prompt_encodes_exactly_as_diffusers_does(tiny_dir: Path, cache: PipelineCache, arch: str) -> None:
    pipe = cache.get(load_request(tiny_dir, arch))[0].pipeline
    ours = encode_prompts(pipe, ["a red fox in the snow"])
    if arch == "sdxl":
        theirs, _, pooled, _ = pipe.encode_prompt(
            "a red fox in the snow", device="cpu", do_classifier_free_guidance=False
        )
        assert torch.equal(ours.pooled, pooled)
    else:
        theirs, _ = pipe.encode_prompt("a red fox in the snow", "cpu", 1, False)
    assert torch.equal(ours.embeds, theirs)


def picture(runner_events: list, job_id: str = "j") -> np.ndarray:
    [done] = [e for e in runner_events if isinstance(e, JobDone) and e.job_id == job_id]
    return np.asarray(Image.open(io.BytesIO(done.images[0].png)).convert("RGB"), dtype=np.int16)


def render(cache: PipelineCache, load: LoadRequest, *jobs: tuple[str, str], clip_skip: int = 1, steps: int = 2) -> list:
    events: list = []
    runner = BatchRunner("cpu", cache, events.append, lambda job_id: False)
    parts = tuple(JobPart(job_id, prompt, "", (7,)) for job_id, prompt in jobs)
    runner.run(
        RunBatch.of("b", load, parts, 64, 64, steps, 7.0, "Euler", "Automatic", clip_skip=clip_skip, model_name=load.name)
    )
    return events


def alone(cache: PipelineCache, load: LoadRequest, prompt: str, steps: int = 2) -> bytes:
    """The picture of one job in a batch of its own. Pictures compared are made so: in one batch, rows
    differ by float rounding (how the kernels block the batch; with one thread, "a fox" and
    "a (fox:1.0)" side by side came out a level apart), so equal would fail and unequal prove nothing."""
    return picture(render(cache, load, ("j", prompt), steps=steps)).tobytes()


LONG = ", ".join(f"tree{i}" for i in range(40))  # well past 77 tokens


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_the_prompt_syntax_changes_pictures_as_in_a1111(tiny_dir: Path, cache: PipelineCache, arch: str) -> None:
    load = load_request(tiny_dir, arch)
    drawn = {prompt: alone(cache, load, prompt) for prompt in (
        "a fox", "a (fox:1.0)", "a (fox:1.5)", "a (fox)", "a \\(fox\\)", "a BREAK fox",
        LONG + ", a castle", LONG + ", a river",
    )}  # fmt: skip
    assert drawn["a fox"] == drawn["a (fox:1.0)"]  # weight 1.0 is exactly no weight
    assert drawn["a fox"] != drawn["a (fox:1.5)"]
    assert drawn["a (fox)"] != drawn["a \\(fox\\)"]  # escaped brackets are words, not emphasis
    assert drawn["a fox"] != drawn["a BREAK fox"]
    assert drawn[LONG + ", a castle"] != drawn[LONG + ", a river"]  # they differ only after token 77
    huge = render(cache, load, ("huge", ", ".join(f"leaf{i}" for i in range(150))))  # ~300 tokens
    assert picture(huge, "huge").shape == (64, 64, 3)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_prompt_editing_and_alternation_change_the_conditioning_while_sampling(
    tiny_dir: Path, cache: PipelineCache, arch: str
) -> None:
    load = load_request(tiny_dir, arch)
    drawn = {prompt: alone(cache, load, prompt, steps=4) for prompt in (
        "a fox", "a dog", "a [fox:fox:0.5]", "a [fox:dog:0.5]", "a [fox:dog:1]", "a [fox:dog:3]", "a [fox|dog]",
        "a [fox|fox]",
    )}  # fmt: skip
    # a schedule that never changes is no schedule
    assert drawn["a fox"] == drawn["a [fox:fox:0.5]"] == drawn["a [fox|fox]"]
    for scheduled in ("a [fox:dog:0.5]", "a [fox:dog:1]", "a [fox|dog]"):
        assert drawn[scheduled] not in (drawn["a fox"], drawn["a dog"]), scheduled
    assert drawn["a [fox:dog:0.5]"] != drawn["a [fox:dog:1]"]  # the step it changes at matters
    # A1111 counts model calls from 0 and switches after the call numbered `when`: at 4 steps,
    # [fox:dog:3] is "fox" to the end (calls 0-3), [fox:dog:0.5] "fox" for calls 0-2
    assert drawn["a [fox:dog:3]"] == drawn["a fox"]


def test_a_job_batched_with_longer_prompts_gets_the_picture_it_would_get_alone(
    tiny_dir: Path, cache: PipelineCache
) -> None:
    load = load_request(tiny_dir, "sd1")
    together = render(cache, load, ("short", "a fox"), ("long", LONG))
    by_itself = render(cache, load, ("short", "a fox"))
    assert np.abs(picture(together, "short") - picture(by_itself, "short")).max() <= 3  # float rounding only


def test_clip_skip_changes_the_picture(tiny_dir: Path, cache: PipelineCache) -> None:
    load = load_request(tiny_dir, "sd1")
    one, two = render(cache, load, ("j", "a fox")), render(cache, load, ("j", "a fox"), clip_skip=2)
    assert not np.array_equal(picture(one), picture(two))


def test_the_infotext_keeps_the_prompt_as_typed(tiny_dir: Path, cache: PipelineCache) -> None:
    from tests.a1111_infotext import parse_generation_parameters as parse_infotext

    typed = "a (fox:1.3) <lora:fluffy:0.8> BREAK \\(snow\\)"
    events = render(cache, load_request(tiny_dir, "sd1"), ("j", typed))
    [done] = [e for e in events if isinstance(e, JobDone)]
    assert parse_infotext(done.images[0].infotext)[0] == typed


def test_the_bot_notes_tags_in_every_scheduled_text_before_queueing() -> None:
    from bot.rules.limits import GenerationRequest, Limits, validate
    from tests.helpers import checkpoint_ref

    def check(prompt: str, negative: str = ""):
        return validate(
            GenerationRequest.of(prompt=prompt, negative=negative, requester_id="u", steps=10),
            checkpoint_ref(),
            Limits(),
        )

    spec = check("a fox [<hypernet:fluffy:0.8>:<hypernet:sharp:1>:0.5]")
    assert spec.notes and "<hypernet:fluffy:0.8>, <hypernet:sharp:1>" in spec.notes[0]
    assert check("a (fox:1.2) BREAK [snow|rain]").notes == ()


def test_prompt_explain_on_the_command_line(cli) -> None:
    import json

    r = cli("prompt", "explain", "a (red:1.3) fox <lora:fluffy:0.8> BREAK snow", "--json")
    assert r.code == 0, r.err
    reading = json.loads(r.out)
    [entry] = reading["schedule"]
    assert len(entry["chunks"]) == 2 and reading["extra_networks"] == ["<lora:fluffy:0.8>"]
    assert {"weight": 1.3, "text": "red"} in entry["chunks"][0]["runs"]
    long = cli("prompt", "explain", ", ".join(f"word{i}" for i in range(60)))
    assert long.code == 0 and "chunk 3:" in long.out
    edited = cli("prompt", "explain", "a [cat:dog:0.5]", "--json")
    assert edited.code == 0 and json.loads(edited.out)["schedule"][0]["until_step"] == 10
    regions = cli("prompt", "explain", "a fox ADDROW snow", "--regions", "1,3 rows")
    assert regions.code == 0 and "2: 0-100% across, 25-100% down: snow" in regions.out
    refused = cli("prompt", "explain", "a fox", "--regions", "1,1")
    assert refused.code != 0 and "separate the regions' prompts with ADDCOL or ADDROW" in refused.err
