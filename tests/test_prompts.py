"""Prompts read as A1111 reads them: the parser (pure) and the worker's embeddings on tiny checkpoints."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from bot.generation.prompt_chunks import CHUNK, chunk_prompt
from bot.generation.prompt_syntax import PromptSyntaxError, extract_extra_networks, parse_attention, parse_prompt
from gpu_worker.cache import PipelineCache
from gpu_worker.loader import load_pipeline
from gpu_worker.prompt_encoding import encode_prompts
from gpu_worker.protocol import JobDone, JobPart, LoadRequest, RunBatch
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


@pytest.mark.parametrize("text", ["a [cat:dog:0.5] b", "[cat:10]", "[cat::0.3]", "a [cat|dog|bird]"])
def test_prompt_editing_and_alternation_are_refused_by_name(text: str) -> None:
    with pytest.raises(PromptSyntaxError, match=r"prompt editing|alternation"):
        parse_prompt(text)


@pytest.mark.parametrize("text", ["\\[cat:dog:0.5\\]", "[cat]", "(cat:1.2)", "a | b", "[a:b]"])
def test_lookalikes_pass(text: str) -> None:
    parse_prompt(text)


# --- chunks, with the real CLIP tokenizer bundled for SD1 ---------------------------------------------


@pytest.fixture(scope="module")
def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(Path("gpu_worker/configs/sd1/tokenizer").resolve()))


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


def render(cache: PipelineCache, load: LoadRequest, *jobs: tuple[str, str], clip_skip: int = 1) -> list:
    events: list = []
    runner = BatchRunner("cpu", cache, events.append, lambda job_id: False)
    parts = tuple(JobPart(job_id, prompt, "", (7,)) for job_id, prompt in jobs)
    runner.run(
        RunBatch("b", load, parts, 64, 64, 2, 7.0, "Euler", "Automatic", clip_skip=clip_skip, model_name=load.name)
    )
    return events


LONG = ", ".join(f"tree{i}" for i in range(40))  # well past 77 tokens


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_the_prompt_syntax_changes_pictures_as_in_a1111(tiny_dir: Path, cache: PipelineCache, arch: str) -> None:
    load = load_request(tiny_dir, arch)
    events = render(
        cache,
        load,
        ("fox", "a fox"),
        ("one", "a (fox:1.0)"),
        ("more", "a (fox:1.5)"),
        ("paren", "a (fox)"),
        ("literal", "a \\(fox\\)"),
        ("break", "a BREAK fox"),
        ("long-a", LONG + ", a castle"),
        ("long-b", LONG + ", a river"),
        ("huge", ", ".join(f"leaf{i}" for i in range(150))),  # ~300 tokens
    )
    same = lambda a, b: np.array_equal(picture(events, a), picture(events, b))  # noqa: E731
    assert same("fox", "one")  # weight 1.0 is exactly no weight
    assert not same("fox", "more")
    assert not same("paren", "literal")  # escaped brackets are words, not emphasis
    assert not same("fox", "break")
    assert not same("long-a", "long-b")  # they differ only after token 77
    assert picture(events, "huge").shape == (64, 64, 3)


def test_a_job_batched_with_longer_prompts_gets_the_picture_it_would_get_alone(
    tiny_dir: Path, cache: PipelineCache
) -> None:
    load = load_request(tiny_dir, "sd1")
    together = render(cache, load, ("short", "a fox"), ("long", LONG))
    alone = render(cache, load, ("short", "a fox"))
    assert np.abs(picture(together, "short") - picture(alone, "short")).max() <= 3  # float rounding only


def test_clip_skip_changes_the_picture(tiny_dir: Path, cache: PipelineCache) -> None:
    load = load_request(tiny_dir, "sd1")
    one, two = render(cache, load, ("j", "a fox")), render(cache, load, ("j", "a fox"), clip_skip=2)
    assert not np.array_equal(picture(one), picture(two))


def test_the_infotext_keeps_the_prompt_as_typed(tiny_dir: Path, cache: PipelineCache) -> None:
    from gpu_worker.infotext import parse_infotext

    typed = "a (fox:1.3) <lora:fluffy:0.8> BREAK \\(snow\\)"
    events = render(cache, load_request(tiny_dir, "sd1"), ("j", typed))
    [done] = [e for e in events if isinstance(e, JobDone)]
    assert parse_infotext(done.images[0].infotext)[0] == typed


def test_the_bot_refuses_what_cannot_run_and_notes_tags_before_queueing() -> None:
    from bot.generation.requests import GenerationRequest, Limits, validate
    from tests.helpers import checkpoint_ref

    def check(prompt: str, negative: str = ""):
        return validate(
            GenerationRequest(prompt=prompt, negative=negative, requester_id="u"), checkpoint_ref(), Limits()
        )

    with pytest.raises(PromptSyntaxError, match="the negative prompt uses alternation"):
        check("a fox", "[blurry|ugly]")
    spec = check("a fox <lora:fluffy:0.8>")
    assert spec.notes and "<lora:fluffy:0.8>" in spec.notes[0]
    assert check("a (fox:1.2) BREAK snow").notes == ()


def test_prompt_explain_on_the_command_line(cli) -> None:
    import json

    r = cli("prompt", "explain", "a (red:1.3) fox <lora:fluffy:0.8> BREAK snow", "--json")
    assert r.code == 0, r.err
    reading = json.loads(r.out)
    assert len(reading["chunks"]) == 2 and reading["extra_networks"] == ["<lora:fluffy:0.8>"]
    assert {"weight": 1.3, "text": "red"} in reading["chunks"][0]["runs"]
    long = cli("prompt", "explain", ", ".join(f"word{i}" for i in range(60)))
    assert long.code == 0 and "chunk 3:" in long.out
    refused = cli("prompt", "explain", "a [cat:dog:0.5]")
    assert refused.code == 1 and refused.err.strip().splitlines() == [
        "error: the prompt uses prompt editing ([cat:dog:0.5]), which Easel does not support yet; "
        "write the words without it"
    ]
