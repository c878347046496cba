"""Prompts as A1111 reads them: emphasis, escapes, BREAK, and extra-network tags. Pure Python.

Followed (facts, not code) from AUTOMATIC1111/stable-diffusion-webui:
- modules/prompt_parser.py `parse_prompt_attention` and `re_attention`: `(x)` multiplies by 1.1,
  `[x]` divides by 1.1, `(x:w)` multiplies by w (negative and zero allowed), `\\(` `\\)` `\\[`
  `\\]` `\\\\` are literals, brackets left open apply to the rest of the prompt, `BREAK` (upper case,
  as a word) ends the chunk, runs of equal weight are merged.
- modules/extra_networks.py: `<name:arg:arg>` tags (lora, lyco, hypernet) are taken out of the text.
- modules/prompt_parser.py's grammar: `[from:to:when]` (prompt editing) and `[a|b]` (alternation)
  change the conditioning while sampling. Easel does not run those yet and refuses them by name
  rather than feeding their brackets to CLIP as words.

The worker (gpu_worker/prompt_encoding.py) turns the parsed form into embeddings; the bot uses the
same parser to refuse what cannot run before a job is queued, and `python bot.py prompt explain`
shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.errors import EaselError

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
_ESCAPED = re.compile(r"\\[\\()\[\]]")
# [from:to:when], [to:when], [from::when] and [a|b], with no brackets inside (after escapes are removed).
_EDITING = re.compile(r"\[[^\[\]]*:[^\[\]]*:\s*[+-]?[\d.]+\s*\]|\[[^\[\]:]*:\s*[+-]?[\d.]+\s*\]")
_ALTERNATION = re.compile(r"\[[^\[\]]*\|[^\[\]]*\]")

ROUND, SQUARE = 1.1, 1 / 1.1


class PromptSyntaxError(EaselError):
    """Prompt syntax Easel recognises but cannot run (yet); the message says which and where."""


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


def check_runnable(text: str, what: str = "prompt") -> None:
    """Refuse syntax that changes the prompt while sampling, which Easel does not run yet."""
    plain = _ESCAPED.sub("", text)
    editing = _EDITING.search(plain)
    if editing:
        raise PromptSyntaxError(
            f"the {what} uses prompt editing ({editing.group(0)[:40]}), which Easel does not support yet; "
            "write the words without it"
        )
    alternation = _ALTERNATION.search(plain)
    if alternation:
        raise PromptSyntaxError(
            f"the {what} uses alternation ({alternation.group(0)[:40]}), which Easel does not support yet; "
            "write the words without it"
        )


@dataclass(frozen=True)
class ParsedPrompt:
    segments: list[tuple[str, float]]
    extra_networks: list[ExtraNetwork]


def parse_prompt(text: str, what: str = "prompt") -> ParsedPrompt:
    """The whole reading of one prompt: refusals first, then tags out, then emphasis and BREAKs."""
    check_runnable(text, what)
    plain, networks = extract_extra_networks(text)
    return ParsedPrompt(parse_attention(plain), networks)
