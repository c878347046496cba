"""Textual-inversion embeddings: their vectors, read once and cached, and the words that stand for them.

Followed (facts, not code) from AUTOMATIC1111 modules/textual_inversion/textual_inversion.py and
modules/sd_hijack.py `EmbeddingsWithFixes`: an embedding's name, where its tokens appear in a prompt
(common/prompt_chunks.py finds them), is replaced by its vectors in the text encoder's token
embeddings; SDXL embeddings carry one set per encoder (`clip_l`, `clip_g`). The pipeline itself is
never changed (no tokens added, no embedding matrix resized), so a prompt without the word encodes
exactly as before.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.prompt_chunks import Words, words_for
from common.protocol import EmbeddingUse

MAX_CACHED = 256  # embeddings are a few kB each


class EmbeddingError(Exception):
    """An embedding cannot be used; the message says which and why, in one line, for the user."""


@dataclass
class WordEmbeddings:
    """The embeddings a batch may use: vectors per text encoder, and each tokenizer's spelling of them."""

    vectors: dict[str, list[torch.Tensor]]  # name -> one (vectors, width) tensor per text encoder
    short_hashes: dict[str, str]
    _spelt: dict[int, Words] = field(default_factory=dict)

    def words(self, tokenizer) -> Words:
        if id(tokenizer) not in self._spelt:
            self._spelt[id(tokenizer)] = words_for(tokenizer, {n: v[0].shape[0] for n, v in self.vectors.items()})
        return self._spelt[id(tokenizer)]

    def vector(self, name: str, encoder: int) -> torch.Tensor:
        return self.vectors[name][encoder]


class EmbeddingCache:
    def __init__(self) -> None:
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def for_batch(self, uses: tuple[EmbeddingUse, ...], encoders: list[torch.nn.Module]) -> WordEmbeddings | None:
        """The batch's embeddings, each checked against the pipeline's text encoders."""
        if not uses:
            return None
        vectors, hashes = {}, {}
        for use in uses:
            tensors = self._tensors(use)
            keys = ["clip_l", "clip_g"] if len(encoders) == 2 else ["emb_params"]
            pair = {"clip_l", "clip_g"} <= set(tensors)
            if len(encoders) == 2 and not pair:
                raise EmbeddingError(f"the embedding {use.name} is not an SDXL embedding (no clip_l/clip_g)")
            if len(encoders) == 1 and pair:
                raise EmbeddingError(f"the embedding {use.name} is an SDXL embedding; this checkpoint is not SDXL")
            per_encoder = []
            for key, encoder in zip(keys, encoders, strict=True):
                vector = tensors[key]
                width = encoder.get_input_embeddings().embedding_dim
                if vector.shape[-1] != width:
                    raise EmbeddingError(
                        f"the embedding {use.name} has vectors {vector.shape[-1]} wide; this checkpoint's text "
                        f"encoder takes {width}"
                    )
                per_encoder.append(vector.reshape(-1, width))
            vectors[use.name] = per_encoder
            hashes[use.name] = use.short_hash
        return WordEmbeddings(vectors, hashes)

    def _tensors(self, use: EmbeddingUse) -> dict[str, torch.Tensor]:
        if use.sha256 in self._cache:
            self._cache.move_to_end(use.sha256)
            return self._cache[use.sha256]
        path = Path(use.path)
        if not path.is_file():
            raise EmbeddingError(f"the embedding {use.name}: the file is no longer on disk; an admin needs to rescan")
        try:
            tensors = _read(path)
        except Exception as e:
            raise EmbeddingError(f"the embedding {use.name} cannot be read: {str(e).splitlines()[0][:200]}") from None
        self._cache[use.sha256] = tensors
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return tensors


def _read(path: Path) -> dict[str, torch.Tensor]:
    """Vectors by key: `emb_params`, or `clip_l` and `clip_g` (SDXL)."""
    with open(path, "rb") as f:
        pickled = f.read(2)[:1] == b"\x80" or path.suffix.lower() in (".pt", ".bin")
    if not pickled:
        tensors = load_file(path)
    else:
        # PyTorch's restricted unpickler (tensors, dicts, numbers, strings only); the bot's allow-list
        # reader vetted the file when it was registered.
        data = torch.load(path, map_location="cpu", weights_only=True)
        params = data.get("string_to_param") if isinstance(data, dict) else None
        tensors = params if isinstance(params, dict) else data
        tensors = {"emb_params": next(iter(tensors.values()))} if "clip_l" not in tensors else tensors
    if "clip_l" in tensors and "clip_g" in tensors:
        return {"clip_l": tensors["clip_l"].float(), "clip_g": tensors["clip_g"].float()}
    return {"emb_params": next(iter(tensors.values())).detach().float()}
