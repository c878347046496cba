"""What a GGUF transformer saves, and what widening its weights as it runs costs.

A FLUX.1-dev-wide transformer (3072 wide, 24 heads, FLUX.1's MLP) cut to a few blocks, written as
a bf16 safetensors file (BFL's layout) and as Q8_0 and Q4_K GGUF files of the same weights (the tiny
maker's writer: gpu_worker/testing/quantise.py), each loaded by the worker's own reader and builder
in bf16. Figures: the bytes the loaded transformer holds (exact: its parameters), as a ratio of the
bf16 file's model; and one forward pass at 256x256 (256 picture tokens, 64 text tokens), median of
interleaved repeats after a warm-up, as a ratio of bf16's in the same run. The whole model's bytes
scale with its depth (FLUX.1 dev: 19 double and 38 single blocks), so the memory ratios carry over.

    python bench/gguf_memory.py [--double 1] [--single 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from diffusers import FluxTransformer2DModel

from bench.harness import median, report, spread, time_interleaved
from common.bundled import CONFIG_ROOT
from gpu_worker.families import flux_layout
from gpu_worker.model_parts import Parts, build_transformer, open_tensor_file
from gpu_worker.save import save_atomically
from gpu_worker.testing.quantise import quantise_file


def write_files(folder: Path, double: int, single: int) -> dict[str, Path]:
    config = FluxTransformer2DModel.load_config(str(CONFIG_ROOT / "flux" / "transformer"))
    torch.manual_seed(0)
    model = FluxTransformer2DModel.from_config(config | {"num_layers": double, "num_single_layers": single})
    for p in model.parameters():  # trained weights' scale, not the init's
        torch.nn.init.normal_(p, std=0.02)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in flux_layout.to_original(model.state_dict()).items()}
    del model
    files = {"bf16": folder / "flux-cut.safetensors"}
    save_atomically(state, files["bf16"], {}, folder / ".flux-cut.part")
    for form, name in (("gguf-q8_0", "Q8_0"), ("gguf-q4_k", "Q4_K")):
        copy = folder / f".flux-cut-{name}.safetensors"
        save_atomically(state, copy, {}, folder / f".{name}.part")
        files[name] = quantise_file(copy, form, "flux", folder / f"flux-cut-{name}.gguf")
    return files


def load(path: Path) -> torch.nn.Module:
    parts = Parts(open_tensor_file(path, torch.bfloat16), (), CONFIG_ROOT / "flux", "cpu")
    return build_transformer(parts, FluxTransformer2DModel, flux_layout, "Flux")


def held(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), args.double, args.single)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        models = {name: load(path) for name, path in files.items()}
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 256, 64, generator=generator).to(torch.bfloat16),
        "encoder_hidden_states": torch.randn(1, 64, 4096, generator=generator).to(torch.bfloat16),
        "pooled_projections": torch.randn(1, 768, generator=generator).to(torch.bfloat16),
        "timestep": torch.tensor([0.5], dtype=torch.bfloat16),
        "guidance": torch.tensor([3.5], dtype=torch.bfloat16),
        "img_ids": torch.zeros(256, 3, dtype=torch.bfloat16),
        "txt_ids": torch.zeros(64, 3, dtype=torch.bfloat16),
    }
    outputs = {name: model(**inputs).sample.float() for name, model in models.items()}  # the warm-up
    times = time_interleaved({name: (lambda m=model: m(**inputs)) for name, model in models.items()}, args.repeats)
    base = held(models["bf16"])
    figures: dict[str, object] = {
        "model": f"FLUX.1 dev's widths, {args.double} double and {args.single} single blocks, computed in bf16 on the CPU",
        "parameters": sum(p.numel() for p in models["bf16"].parameters()),
        "file_bytes": sizes,
        "held_bytes": {name: held(model) for name, model in models.items()},
        "held_ratio_to_bf16": {name: round(held(model) / base, 3) for name, model in models.items()},
        "forward_seconds": {name: spread(values) for name, values in times.items()},
        "forward_ratio_to_bf16": {name: round(median(values) / median(times["bf16"]), 2) for name, values in times.items()},
        "output_error_vs_bf16": {
            name: round(float((out - outputs["bf16"]).norm() / outputs["bf16"].norm()), 4) for name, out in outputs.items()
        },
    }
    report("gguf_memory", figures)


if __name__ == "__main__":
    main()
