"""Prompts for Flux and SD3 as A1111-style prompts are read: LoRA tags out, BREAK dropped, and
emphasis — `(word:1.3)`, `(word)`, `[word]` — on the T5-XXL tokens (and, for SD3, the CLIP
tokens), the way Forge weights Flux's T5 and A1111 weights SD3's encoders: each token's embedding
multiplied by its weight, then the whole rescaled to its unweighted mean (A1111's "Original"
emphasis, gpu_worker/prompt_encoding.py `emphasize`).

A prompt with no emphasis is encoded by the pipeline itself from the plain text, so the common case
is exactly diffusers'; with emphasis, the weighted encoders' outputs replace the pipeline's.
Prompt editing and alternation are refused for these models before a job is queued
(bot/rules/limits.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.prompt_syntax import BREAK, parse_prompt
from gpu_worker.prompt_encoding import emphasize


def segments(text: str) -> list[tuple[str, float]]:
    """(text, weight) pieces of a prompt, tags out; a BREAK (a chunk boundary for CLIP, nothing
    to T5) reads as a space."""
    return [(" ", 1.0) if piece == BREAK else (piece, weight) for piece, weight in parse_prompt(text).segments]


def plain(text: str) -> str:
    """The words alone, as the encoders read them when nothing is emphasised."""
    return "".join(piece for piece, _ in segments(text))


def weighted(text: str) -> bool:
    return any(weight != 1.0 for _, weight in segments(text))


def _weighted_ids(tokenizer, text: str, length: int, end: bool) -> tuple[list[int], list[float]]:
    """Token ids and per-token weights, each piece tokenized alone (A1111's way), truncated and
    padded to `length` as the pipeline pads its own (T5: text, </s>, pads; CLIP: BOS, text, EOS, pads)."""
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in segments(text):
        if not piece.strip():
            continue
        tokens = tokenizer(piece, add_special_tokens=False).input_ids
        ids += tokens
        weights += [weight] * len(tokens)
    if end:  # T5
        ids, weights = [*ids[: length - 1], tokenizer.eos_token_id], [*weights[: length - 1], 1.0]
    else:  # CLIP
        ids = [tokenizer.bos_token_id, *ids[: length - 2], tokenizer.eos_token_id]
        weights = [1.0, *weights[: length - 2], 1.0]
    pad = tokenizer.pad_token_id
    return ids + [pad] * (length - len(ids)), weights + [1.0] * (length - len(weights))


def encode_weighted(encoder, tokenizer, texts: Sequence[str], length: int, t5: bool, hidden_layer: int | None = None) -> torch.Tensor:
    rows = [_weighted_ids(tokenizer, text, length, end=t5) for text in texts]
    ids = torch.tensor([r[0] for r in rows], device=encoder.device)
    with torch.no_grad():
        output = encoder(ids, output_hidden_states=hidden_layer is not None)
    z = output[0] if hidden_layer is None else output.hidden_states[hidden_layer]
    weights = torch.tensor([r[1] for r in rows], dtype=z.dtype, device=z.device)
    return torch.stack([emphasize(row, w) for row, w in zip(z, weights, strict=True)])
