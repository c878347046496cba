"""How Easel (and A1111) reads a prompt: which text holds at which steps (prompt editing,
alternation), its 75-token chunks, the weight of every run of tokens, the textual-inversion words
that become vectors, and the extra-network tags taken out. Behind `python bot.py prompt explain`
and `/explain`. Tokenizer only: no torch.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from bot.rules.limits import MAX_STEPS
from bot.wildcards import Wildcards, is_template
from common.bundled import CONFIG_ROOT
from common.errors import EaselError
from common.prompt_chunks import CHUNK, Chunk, chunk_prompt, words_for
from common.prompt_schedule import prompt_schedule
from common.prompt_syntax import parse_prompt
from common.regions import RegionSettings, active, check, describe, region_map

# Every architecture Easel runs uses CLIP's BPE vocabulary; SD1's bundled tokenizer stands for all.
TOKENIZER = CONFIG_ROOT / "sd1" / "tokenizer"


@cache
def _tokenizer() -> Any:
    """Loaded once (building CLIP's BPE tables takes a moment); the tokenizer only, no torch."""
    from transformers import CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # its notes about tokenizer options are not for our users
    return CLIPTokenizer.from_pretrained(str(TOKENIZER))


def explain(text: str, steps: int = 20, embeddings: dict[str, int] | None = None, regions: str = "") -> dict[str, Any]:
    """The reading of `text` over `steps` sampling steps, with `embeddings` (name -> vectors) as the
    words that stand for vectors, and the regions `regions` (or the prompt's ADDCOL/ADDROW) divide the
    picture into (common/regions.py); blocking (tokenizer): call it off the loop."""
    if not 1 <= steps <= MAX_STEPS:
        raise EaselError(f"steps must be between 1 and {MAX_STEPS}")
    found: dict[str, Any] = {}
    if active(text, regions):
        settings = RegionSettings.parse(regions) if regions.strip() else RegionSettings()
        made = check(text, "", settings, steps)
        found = {"regions": {"settings": settings.text(), "map": region_map(made.cells), "list": describe(made)}}
        text = made.prompt  # as the model reads it: every key a BREAK, the common part added
    tokenizer = _tokenizer()
    words = words_for(tokenizer, embeddings) if embeddings else None
    schedule, tags = [], []
    for until_step, scheduled in prompt_schedule(text, steps):  # prompt editing and alternation
        tags += [tag.text for tag in parse_prompt(scheduled).extra_networks]
        chunks = [
            _chunk_runs(chunk, tokenizer, embeddings or {}) for chunk in chunk_prompt(scheduled, tokenizer, words)
        ]
        schedule.append(
            {"until_step": until_step, "text": scheduled, "chunks": chunks, "tokens": sum(c["tokens"] for c in chunks)}
        )
    return {"steps": steps, "schedule": schedule, "extra_networks": list(dict.fromkeys(tags))} | found


def _chunk_runs(chunk: Chunk, tokenizer: Any, embeddings: dict[str, int]) -> dict[str, Any]:
    """Runs of equal weight, decoded; an embedding's vectors are one run of their own."""
    body = list(zip(chunk.tokens[1:-1], chunk.weights[1:-1], strict=True))
    starts = {offset: name for offset, name in chunk.fixes}
    runs: list[dict[str, Any]] = []
    used, i = 0, 0
    while i < len(body):
        token, weight = body[i]
        if i in starts:  # an embedding: its vectors, whatever placeholder tokens stand for them
            name, vectors = starts[i], embeddings.get(starts[i], 1)
            runs.append({"weight": weight, "text": f"<embedding {name}: {vectors} vectors>"})
            used, i = used + vectors, i + vectors
            continue
        if token != tokenizer.eos_token_id:
            if runs and runs[-1]["weight"] == weight and "tokens" in runs[-1]:
                runs[-1]["tokens"].append(token)
            else:
                runs.append({"weight": weight, "tokens": [token]})
            used += 1
        i += 1
    return {
        "tokens": used,
        "runs": [
            {"weight": round(r["weight"], 4), "text": r["text"] if "text" in r else tokenizer.decode(r["tokens"])}
            for r in runs
        ],
    }


def expand_template(text: str, seed: int, wildcards: Wildcards | None) -> tuple[str, dict[str, Any]]:
    """A template's expansion for a seed (bot/wildcards.py), and what the reading says of it; the
    text itself when it is no template. Blocking: call it off the loop."""
    if not is_template(text):
        return text, {}
    if wildcards is None:
        raise EaselError("wildcards and {…|…} variants are not available here")
    [expanded] = wildcards.expand(text, [seed])
    return expanded, {"template": text, "seed": seed, "expanded": expanded}


def render(reading: dict[str, Any]) -> list[str]:
    """The reading as lines of text, for a terminal or a Discord code block."""
    lines = []
    if "template" in reading:
        lines += [f"template: {reading['template']}", f"with seed {reading['seed']}: {reading['expanded']}"]
    if "regions" in reading:
        regions = reading["regions"]
        lines.append(f"regions ({regions['settings']}), each reading its own chunks:")
        lines += [f"  {row}" for row in regions["map"]]
        for number, region in enumerate(regions["list"], 1):
            base = f", base {region['base']:g}" if region["base"] is not None else ""
            lines.append(
                f"  {number}: {region['left']}-{region['right']}% across, {region['top']}-{region['bottom']}% down{base}: {region['text']}"
            )
    if reading["extra_networks"]:
        lines.append(
            f"taken out of the text (LoRAs apply to the whole picture): {', '.join(reading['extra_networks'])}"
        )
    first = 1
    for entry in reading["schedule"]:
        # A1111 counts model calls from 0: an entry that lasts until step N (its `until_step`) still
        # holds at the N+1st step. An entry reached only after the last step is never drawn.
        last = min(entry["until_step"] + 1, reading["steps"])
        if first > last:
            continue
        if len(reading["schedule"]) > 1:
            lines.append(f"steps {first}-{last} of {reading['steps']}: {entry['text']}")
        first = last + 1
        lines.append(f"{len(entry['chunks'])} chunk(s) of {CHUNK} tokens; {entry['tokens']} tokens used")
        for number, chunk in enumerate(entry["chunks"], 1):
            lines.append(f"chunk {number}: {chunk['tokens']} tokens")
            lines += [f"  {run['weight']:>7.4f}  {run['text']}" for run in chunk["runs"]]
    return lines
