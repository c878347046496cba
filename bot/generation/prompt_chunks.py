"""A parsed prompt cut into CLIP's 77-token chunks, as A1111 cuts it (modules/sd_hijack_clip.py
`tokenize_line`): 75 tokens a chunk; when a chunk fills and a comma lies within its last 20 tokens,
what follows the comma moves on; BREAK closes the chunk early; each chunk padded with the end token
and wrapped in BOS/EOS. No torch: the worker encodes these (gpu_worker/prompt_encoding.py) and
`python bot.py prompt explain` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.generation.prompt_syntax import BREAK, BREAK_WEIGHT, parse_prompt

CHUNK = 75
COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TokenIds:
    bos: int
    eos: int
    pad: int
    comma: int | None


def token_ids(tokenizer) -> TokenIds:
    return TokenIds(
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        comma=tokenizer.get_vocab().get(",</w>"),
    )


def chunk_prompt(text: str, tokenizer) -> list[Chunk]:
    """The prompt's chunks, each of 77 token ids with their weights (BOS/EOS/padding weigh 1)."""
    ids = token_ids(tokenizer)
    segments = parse_prompt(text).segments
    tokenized = tokenizer([t for t, _ in segments], truncation=False, add_special_tokens=False)["input_ids"]
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal chunk, last_comma
        missing = CHUNK - len(chunk.tokens)
        chunk.tokens = [ids.bos, *chunk.tokens, *([ids.eos] * missing), ids.eos]
        chunk.weights = [1.0, *chunk.weights, *([1.0] * missing), 1.0]
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for tokens, (segment, weight) in zip(tokenized, segments, strict=True):
        if segment == BREAK and weight == BREAK_WEIGHT:
            close()
            continue
        for token in tokens:
            if token == ids.comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                carried = Chunk(chunk.tokens[cut:], chunk.weights[cut:])
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                close()
                chunk = carried
            if len(chunk.tokens) == CHUNK:
                close()
            chunk.tokens.append(token)
            chunk.weights.append(weight)
    if chunk.tokens or not chunks:
        close()
    return chunks


def empty_chunk(ids: TokenIds) -> Chunk:
    return Chunk([ids.bos] + [ids.eos] * (CHUNK + 1), [1.0] * (CHUNK + 2))
