"""A parsed prompt cut into CLIP's 77-token chunks, as A1111 cuts it (modules/sd_hijack_clip.py
`tokenize_line`): 75 tokens a chunk; when a chunk fills and a comma lies within its last 20 tokens,
what follows the comma moves on; BREAK closes the chunk early; each chunk padded with the end token
and wrapped in BOS/EOS. Textual-inversion words (modules/textual_inversion `find_embedding_at_position`):
where the tokens of an embedding's name appear, its vectors take their place — as many token slots
as it has vectors, all in one chunk (a chunk that cannot hold them is closed first). No torch: the
worker encodes these (gpu_worker/prompt_encoding.py) and `python bot.py prompt explain` shows them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from common.prompt_syntax import BREAK, BREAK_WEIGHT, parse_prompt

CHUNK = 75
COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)  # (offset after BOS, embedding name)
    part: int = 0  # which BREAK-separated part of the prompt it holds (regional prompting reads them apart)


# Token ids of an embedding's name -> (name, vectors): the words a prompt may use, per tokenizer.
Words = dict[tuple[int, ...], tuple[str, int]]
PLACEHOLDER = 0  # the token id under an embedding's vectors, as A1111 writes it


def words_for(tokenizer, vectors_by_name: dict[str, int]) -> Words:
    """How `tokenizer` spells each embedding's name, for chunk_prompt."""
    words: Words = {}
    for name, vectors in vectors_by_name.items():
        ids = tuple(tokenizer(name, add_special_tokens=False)["input_ids"])
        if ids:
            words[ids] = (name, vectors)
    return words


def _word_at(tokens: list[int], position: int, words: Words) -> tuple[str, int, int] | None:
    """(name, vectors, tokens spelt) of the longest embedding name starting at `position`."""
    best = None
    for ids, (name, vectors) in words.items():
        if tuple(tokens[position : position + len(ids)]) == ids and (best is None or len(ids) > best[2]):
            best = (name, vectors, len(ids))
    return best


@dataclass(frozen=True)
class TokenIds:
    bos: int
    eos: int
    pad: int
    comma: int | None


# Per tokenizer, read once: `get_vocab()` builds a 49,408-entry dict on every call (25 ms), and every
# prompt of every job is chunked (a batch of four at 20 steps spent a sixth of its time there).
_TOKEN_IDS: weakref.WeakKeyDictionary[object, TokenIds] = weakref.WeakKeyDictionary()


def token_ids(tokenizer) -> TokenIds:
    known = _TOKEN_IDS.get(tokenizer)
    if known is None:
        known = _TOKEN_IDS[tokenizer] = TokenIds(
            bos=tokenizer.bos_token_id,
            eos=tokenizer.eos_token_id,
            pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            comma=tokenizer.get_vocab().get(",</w>"),
        )
    return known


def chunk_prompt(text: str, tokenizer, words: Words | None = None) -> list[Chunk]:
    """The prompt's chunks, each of 77 token ids with their weights (BOS/EOS/padding weigh 1)."""
    ids = token_ids(tokenizer)
    segments = parse_prompt(text).segments
    tokenized = tokenizer([t for t, _ in segments], truncation=False, add_special_tokens=False)["input_ids"]
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1
    part = 0

    def close() -> None:
        nonlocal chunk, last_comma
        missing = CHUNK - len(chunk.tokens)
        chunk.tokens = [ids.bos, *chunk.tokens, *([ids.eos] * missing), ids.eos]
        chunk.weights = [1.0, *chunk.weights, *([1.0] * missing), 1.0]
        chunk.part = part
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for tokens, (segment, weight) in zip(tokenized, segments, strict=True):
        if segment == BREAK and weight == BREAK_WEIGHT:
            close()
            part += 1
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == ids.comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                carried = Chunk(
                    chunk.tokens[cut:], chunk.weights[cut:], [(o - cut, n) for o, n in chunk.fixes if o >= cut]
                )
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                chunk.fixes = [(o, n) for o, n in chunk.fixes if o < cut]
                close()
                chunk = carried
            if len(chunk.tokens) == CHUNK:
                close()
            word = _word_at(tokens, position, words) if words else None
            if word is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                position += 1
                continue
            name, vectors, spelt = word
            if len(chunk.tokens) + vectors > CHUNK:
                close()
            chunk.fixes.append((len(chunk.tokens), name))
            chunk.tokens += [PLACEHOLDER] * vectors
            chunk.weights += [weight] * vectors
            position += spelt
    if chunk.tokens or not chunks:
        close()
    return chunks


def empty_chunk(ids: TokenIds) -> Chunk:
    return Chunk([ids.bos] + [ids.eos] * (CHUNK + 1), [1.0] * (CHUNK + 2))
