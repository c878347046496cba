"""Prompt encoding cost: a 300-token A1111-style prompt (5 chunks, weights, BREAK) vs a 20-token one,
through SD1.5's real-size CLIP text encoder (random weights: the cost is the same) on this machine.
Interleaved, medians; also the share of a 20-step 512x512 job it would be is left to
bench/generation_overhead.py, which runs the whole path (target <= 1.05x of a direct diffusers call).

python bench/prompt_encoding.py [REPEATS]   (default 20; writes bench/results/prompt_encoding-DATE.json)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import median, report, time_interleaved  # noqa: E402


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from gpu_worker.prompt_encoding import Conditioning

    torch.manual_seed(0)
    folder = ROOT / "common" / "configs" / "sd1"
    encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder"))).eval()
    pipe = SimpleNamespace(tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer")), text_encoder=encoder)
    short = "a lighthouse on a cliff at dusk, dramatic sky, oil painting, highly detailed"
    long = ", ".join(f"(detail {i}:1.1)" if i % 7 == 0 else f"element {i}" for i in range(95)) + " BREAK [blurry]"

    def encode(text: str) -> dict:
        return Conditioning(pipe, [text], [""], steps=1, clip_skip=1).inputs(1)

    chunks = {name: encode(text)["prompt_embeds"].shape[1] // 77 for name, text in (("short", short), ("long", long))}
    times = time_interleaved(
        {
            "short": lambda: encode(short),
            "long": lambda: encode(long),
        },
        repeats,
    )
    report(
        "prompt_encoding",
        {
            "short_tokens_chunks": chunks["short"],
            "long_chunks": chunks["long"],
            "short_median_ms": round(median(times["short"]) * 1000, 1),
            "long_median_ms": round(median(times["long"]) * 1000, 1),
            "ratio_long_vs_short": round(median(times["long"]) / median(times["short"]), 2),
            "threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
