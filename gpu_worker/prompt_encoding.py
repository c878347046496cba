"""Prompt embeddings as A1111 computes them: chunks of 75 tokens, emphasis, BREAK, clip skip, SDXL.

Followed (facts, not code) from AUTOMATIC1111/stable-diffusion-webui modules/sd_hijack_clip.py and
modules/sd_emphasis.py:
- A prompt is parsed (common/prompt_syntax.py), its segments tokenized without special
  tokens, and cut into chunks of 75 tokens; when a chunk fills up and a comma lies within its last
  20 tokens, what follows the comma moves to the next chunk. BREAK closes the chunk early. Each
  chunk is padded with the end token to 75, then wrapped in BOS/EOS (77 tokens); where the pad token
  differs from the end token (SD2, SDXL's second encoder), tokens after the first end become pads.
- Each chunk is encoded alone; the encodings are concatenated along the token axis.
- Emphasis "Original": each chunk's z is multiplied by each token's weight, then scaled so its mean
  is what it was. A1111 takes that mean over its whole batch; we take it per prompt, so that jobs
  batched together never change each other's pictures (for one prompt the two agree).
- Clip skip N > 1 (SD1, SD2): the hidden state N layers from the end, through the final layer norm.
  SDXL: both encoders' penultimate hidden states (clip skip moves both further back), concatenated;
  the pooled embedding from the second encoder on the first chunk.
- Prompts of different lengths in one batch, and a prompt and its negative, are padded to the same
  number of chunks with empty chunks (BOS, then EOS), as A1111 pads cond and uncond.
- Textual-inversion words (modules/sd_hijack.py `EmbeddingsWithFixes`): the token embeddings at a
  word's place are replaced by the embedding's vectors, for this call only (a hook on the encoder's
  token-embedding layer), so the pipeline itself is never changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.prompt_chunks import CHUNK, Chunk, TokenIds, chunk_prompt, empty_chunk, token_ids
from common.prompt_schedule import prompt_schedule, text_at
from common.regions import RegionPlan
from gpu_worker.regional_attention import RowLayout, negative_layout, row_layout
from gpu_worker.textual_inversion import WordEmbeddings


def _ids_tensor(chunks: Sequence[Chunk], ids: TokenIds, device: torch.device) -> torch.Tensor:
    rows = []
    for chunk in chunks:
        tokens = list(chunk.tokens)
        if ids.pad != ids.eos:  # after the first end token, pads (SD2 and SDXL's second encoder)
            first_end = tokens.index(ids.eos)
            tokens[first_end + 1 :] = [ids.pad] * (len(tokens) - first_end - 1)
        rows.append(tokens)
    return torch.tensor(rows, dtype=torch.long, device=device)


def emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis, for one prompt: weights applied, the mean restored."""
    if bool((weights == 1.0).all()):
        return z  # exactly what plain encoding gives (A1111 restores the mean per chunk, as here)
    original_mean = z.mean()
    z = z * weights.unsqueeze(-1)
    ratio = original_mean / z.mean()
    # A mean near zero (weights that cancel out, or an untrained encoder) would blow the ratio up into
    # inf/NaN and a black picture; there the weighted values are kept as they are.
    return z * ratio if bool(torch.isfinite(ratio)) and abs(float(ratio)) < 1e3 else z


@dataclass
class Encoded:
    embeds: torch.Tensor  # (prompts, 77 * chunks, features)
    pooled: torch.Tensor | None = None  # (prompts, features) for SDXL


def _with_vectors(encoder, flat: Sequence[Chunk], vectors_of):
    """A hook that writes embeddings' vectors over their placeholders in the token embeddings."""
    fixes = [(row, offset, name) for row, chunk in enumerate(flat) for offset, name in chunk.fixes]
    if not fixes:
        return None

    def write(module, args, output):
        output = output.clone()
        for row, offset, name in fixes:
            vector = vectors_of(name).to(output.device, output.dtype)
            output[row, 1 + offset : 1 + offset + vector.shape[0]] = vector  # 1 + : after BOS
        return output

    return encoder.get_input_embeddings().register_forward_hook(write)


def encode_prompts(
    pipe, prompts: Sequence[str], clip_skip: int = 1, chunks_at_least: int = 1, words: WordEmbeddings | None = None
) -> Encoded:
    """Embeddings for `prompts`, all padded to the same number of chunks (at least `chunks_at_least`)."""
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    sdxl = len(encoders) == 2
    # Each text chunked once per tokenizer; one count for both encoders, whose outputs are concatenated.
    chunked = [
        [chunk_prompt(p, tokenizer, words.words(tokenizer) if words else None) for p in prompts]
        for tokenizer, _ in encoders
    ]
    count = max(chunks_at_least, *(len(c) for per_tokenizer in chunked for c in per_tokenizer))
    per_encoder, pooled = [], None
    for number, (tokenizer, encoder) in enumerate(encoders):
        ids = token_ids(tokenizer)
        padded = [c + [empty_chunk(ids)] * (count - len(c)) for c in chunked[number]]
        flat = [chunk for c in padded for chunk in c]  # prompt-major: one encoder call for all chunks
        hook = _with_vectors(encoder, flat, lambda name, n=number: words.vector(name, n)) if words else None
        try:
            with torch.no_grad():
                output = encoder(_ids_tensor(flat, ids, encoder.device), output_hidden_states=True)
        finally:
            if hook is not None:
                hook.remove()
        if sdxl:
            hidden = output.hidden_states[-(clip_skip + 1)]  # penultimate for clip skip 1, as SDXL is trained
        elif clip_skip > 1:
            # transformers 5's CLIPTextModel holds the norm itself; older ones under .text_model
            norm = getattr(encoder, "text_model", encoder).final_layer_norm
            hidden = norm(output.hidden_states[-clip_skip])
        else:
            hidden = output.last_hidden_state
        weights = torch.tensor([chunk.weights for chunk in flat], dtype=hidden.dtype, device=hidden.device)
        hidden = torch.stack([emphasize(z, w) for z, w in zip(hidden, weights, strict=True)])  # chunk by chunk
        per_encoder.append(hidden.reshape(len(prompts), count * (CHUNK + 2), -1))
        if sdxl and number == 1:  # the second encoder's projection of each prompt's first chunk
            pooled = output[0].reshape(len(prompts), count, -1)[:, 0]
    embeds = torch.cat(per_encoder, dim=-1) if sdxl else per_encoder[0]
    return Encoded(embeds, pooled)


def _tokenizers(pipe) -> list:
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


def chunk_count(pipe, text: str, words: WordEmbeddings | None = None) -> int:
    return max(len(chunk_prompt(text, t, words.words(t) if words else None)) for t in _tokenizers(pipe))


def chunks_needed(pipe, prompt: str, negative: str, steps: int, words: WordEmbeddings | None = None) -> int:
    """The most chunks any text of the prompt's and negative's schedules needs."""
    texts = {text for source in (prompt, negative) for _, text in prompt_schedule(source, steps)}
    return max(chunk_count(pipe, text, words) for text in texts)


def words_used(pipe, prompt: str, negative: str, steps: int, words: WordEmbeddings) -> list[str]:
    """The embeddings a job's texts use, in order of first use (for its infotext's `TI hashes`)."""
    used: dict[str, None] = {}
    for source in (prompt, negative):
        for _, text in prompt_schedule(source, steps):
            for chunk in chunk_prompt(text, pipe.tokenizer, words.words(pipe.tokenizer)):
                used |= dict.fromkeys(name for _, name in chunk.fixes)
    return list(used)


class Conditioning:
    """A batch's embeddings at every step: prompt editing and alternation change them while sampling.

    Every distinct text of every schedule is encoded once, all to the same number of chunks; `inputs`
    gives the pipeline's arguments at a step, `key` tells whether they changed from another step.
    """

    def __init__(
        self,
        pipe,
        prompts: Sequence[str],
        negatives: Sequence[str],
        steps: int,
        clip_skip: int,
        words: WordEmbeddings | None = None,
        hires_steps: int | None = None,
        plans: Sequence[RegionPlan | None] | None = None,
    ) -> None:
        """`steps`: the steps the prompt editing is scheduled over; with `hires_steps`, the hires
        pass's schedule after a pass one of `steps` (common/prompt_schedule.py). `plans`: each
        picture's regions (its prompt and negative are the plan's texts), or None."""
        self.pipe, self.words = pipe, words
        self.plans = list(plans) if plans is not None else [None] * len(prompts)
        self.positive = [prompt_schedule(p, steps, hires_steps) for p in prompts]
        self.negative = [prompt_schedule(n, steps, hires_steps) for n in negatives]
        texts = sorted({text for schedule in self.positive + self.negative for _, text in schedule})
        self._encoded = encode_prompts(pipe, texts, clip_skip, words=words)  # all to the longest text's chunk count
        self._row = {text: i for i, text in enumerate(texts)}
        self.sdxl = self._encoded.pooled is not None

    def _chunks(self, text: str) -> list[Chunk]:
        tokenizer = self.pipe.tokenizer
        return chunk_prompt(text, tokenizer, self.words.words(tokenizer) if self.words else None)

    @property
    def regional(self) -> bool:
        return any(plan is not None for plan in self.plans)

    def regions(self, step: int) -> tuple[list[RowLayout | None], list[RowLayout | None]]:
        """Each picture's regions at model call `step`, for its prompt's row and its negative's."""
        cond: list[RowLayout | None] = []
        uncond: list[RowLayout | None] = []
        for plan, positive, negative in zip(self.plans, self.positive, self.negative, strict=True):
            if plan is None:
                cond.append(None)
                uncond.append(None)
                continue
            chunks = self._chunks(text_at(positive, step))
            cond.append(row_layout(chunks, plan))
            uncond.append(negative_layout(self._chunks(text_at(negative, step)), chunks, plan))
        return cond, uncond

    @property
    def changes(self) -> bool:
        return any(len(schedule) > 1 for schedule in self.positive + self.negative)

    def key(self, step: int) -> tuple[str, ...]:
        """What is in force at model call `step` (from 0)."""
        return tuple(text_at(schedule, step) for schedule in self.positive + self.negative)

    def inputs(self, step: int) -> dict:
        positive = [self._row[text_at(s, step)] for s in self.positive]
        negative = [self._row[text_at(s, step)] for s in self.negative]
        embeds, pooled = self._encoded.embeds, self._encoded.pooled
        inputs = {"prompt_embeds": embeds[positive], "negative_prompt_embeds": embeds[negative]}
        if pooled is not None:
            inputs |= {"pooled_prompt_embeds": pooled[positive], "negative_pooled_prompt_embeds": pooled[negative]}
        return inputs

    def tensor_inputs(self) -> list[str]:
        """The pipeline tensors a step callback replaces when the conditioning changes."""
        if not self.changes:
            return []
        return ["prompt_embeds", "add_text_embeds"] if self.sdxl else ["prompt_embeds"]

    def replace(self, step: int, guided: bool) -> dict:
        """The callback tensors for `step`, as the pipeline holds them (negative first when guided)."""
        new = self.inputs(step)
        both = (lambda neg, pos: torch.cat([neg, pos])) if guided else (lambda neg, pos: pos)
        out = {"prompt_embeds": both(new["negative_prompt_embeds"], new["prompt_embeds"])}
        if self.sdxl:
            out["add_text_embeds"] = both(new["negative_pooled_prompt_embeds"], new["pooled_prompt_embeds"])
        return out
