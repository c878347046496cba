"""Prompts as A1111 reads them: emphasis, escapes, BREAK, and extra-network tags. Pure Python.

Followed (facts, not code) from AUTOMATIC1111/stable-diffusion-webui:
- modules/prompt_parser.py `parse_prompt_attention` and `re_attention`: `(x)` multiplies by 1.1,
  `[x]` divides by 1.1, `(x:w)` multiplies by w (negative and zero allowed), `\\(` `\\)` `\\[`
  `\\]` `\\\\` are literals, brackets left open apply to the rest of the prompt, `BREAK` (upper case,
  as a word) ends the chunk, runs of equal weight are merged.
- modules/extra_networks.py: `<name:arg:arg>` tags (lora, lyco, hypernet) are taken out of the text.
- Prompt editing `[from:to:when]` and alternation `[a|b]` are resolved first, step by step, by
  common/prompt_schedule.py; this reads each resulting text.

The worker (gpu_worker/prompt_encoding.py) turns the parsed form into embeddings; the bot uses the
same parser to refuse what cannot run before a job is queued, and `python bot.py prompt explain`
shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BREAK = "BREAK"
BREAK_WEIGHT = -1.0  # A1111's marker for a BREAK in the parsed list

_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")

ROUND, SQUARE = 1.1, 1 / 1.1


@dataclass(frozen=True)
class ExtraNetwork:
    """An `<lora:name:0.8>`-style tag taken out of the prompt."""

    kind: str  # lora | lyco | hypernet | …
    name: str
    args: tuple[str, ...]
    text: str  # as written

    @property
    def multiplier(self) -> float:
        try:
            return float(self.args[0]) if self.args else 1.0
        except ValueError:
            return 1.0


def parse_attention(text: str) -> list[tuple[str, float]]:
    """(text, weight) pairs; a BREAK is (BREAK, -1.0). A1111's semantics, including its degradations."""
    result: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in result[start:]:
            item[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            result.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(result))
        elif token == "[":
            square_open.append(len(result))
        elif weight is not None and round_open and _is_number(weight):
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    result.append([BREAK, BREAK_WEIGHT])
                result.append([part, 1.0])
    for start in round_open:  # left open: applies to the rest, as in A1111
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    if not result:
        result = [["", 1.0]]
    merged: list[list] = [result[0]]
    for item in result[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(text_, weight_) for text_, weight_ in merged]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:  # "(x:.)": A1111 would fail here; we read it as text
        return False
    return True


def extract_extra_networks(text: str) -> tuple[str, list[ExtraNetwork]]:
    """The prompt without `<kind:name:args>` tags, and the tags (A1111's extra_networks.parse_prompt)."""
    found: list[ExtraNetwork] = []

    def take(match: re.Match[str]) -> str:
        name, *args = match.group(2).split(":")
        found.append(ExtraNetwork(match.group(1), name, tuple(args), match.group(0)))
        return ""

    return _EXTRA_NETWORK.sub(take, text), found


@dataclass(frozen=True)
class ParsedPrompt:
    segments: list[tuple[str, float]]
    extra_networks: list[ExtraNetwork]


def parse_prompt(text: str) -> ParsedPrompt:
    """The reading of one prompt (as it stands at one step): tags out, then emphasis and BREAKs."""
    plain, networks = extract_extra_networks(text)
    return ParsedPrompt(parse_attention(plain), networks)
