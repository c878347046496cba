"""Load time of a transformer-only Flux file with its parts from the component store, against the
all-in-one file of the same weights: cold (every file dropped from the page cache first, so read from
the disk) and with the parts already
loaded for another checkpoint (what a second Flux fine-tune costs; gpu_worker/families/flux.py shares them).

Real FLUX.1 files are 12-23 GB and do not fit this machine's tests, so the files are made here at a
middle size, from a config folder beside them: a transformer 512 wide (4 double and 8 single
blocks), a T5 512 wide with 12 layers, the real CLIP-L and the real Flux VAE. The ratios are the
figure; the seconds depend on the machine.
python bench/flux_load.py [REPEATS]   (writes bench/results/flux_load-DATE.json)
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def config_folder(root: Path) -> Path:
    from common.bundled import CONFIG_ROOT

    folder = root / "bench-flux"
    shutil.copytree(CONFIG_ROOT / "flux", folder)  # links followed: the real tokenizers, CLIP-L and VAE

    def change(part: str, values: dict) -> None:
        path = folder / part / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | values))

    change("transformer", {"attention_head_dim": 64, "num_attention_heads": 8, "num_layers": 4, "num_single_layers": 8, "joint_attention_dim": 512, "axes_dims_rope": [8, 28, 28]})
    change("text_encoder_2", {"d_model": 512, "d_ff": 1360, "d_kv": 64, "num_heads": 8, "num_layers": 12})
    return folder


def main() -> None:
    import torch

    from bench.harness import drop_from_page_cache, report, spread
    from common.protocol import ComponentUse, LoadRequest
    from gpu_worker.families.flux import flux_pipeline
    from gpu_worker.testing.tiny_flux import make_tiny_component, make_tiny_flux

    torch.set_num_threads(2)
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = config_folder(root)
        files = root / "files"
        aio = make_tiny_flux(files / "aio.safetensors", 0, folder=folder)
        alone = [make_tiny_flux(files / f"alone{seed}.safetensors", seed, shape="transformer", folder=folder) for seed in (0, 1)]
        parts = tuple(
            ComponentUse(role, f"{kind}.safetensors", str(make_tiny_component(kind, files / f"{kind}.safetensors", 0, folder=folder)), kind * 8)
            for role, kind in (("clip_l", "clip-l"), ("t5xxl", "t5xxl"), ("vae", "flux-vae"))
        )

        def request(path: Path, components: tuple = ()) -> LoadRequest:
            return LoadRequest(str(path), path.stem, "flux", "Flux", "safetensors", folder.name, "flow", path.stem, components=components)

        def load(req: LoadRequest):
            return flux_pipeline(req, torch.float32, config_root=root)

        times: dict[str, list[float]] = {"all_in_one": [], "transformer_cold": [], "transformer_parts_cached": []}
        for _ in range(repeats):
            for case in times:
                keep = load(request(alone[1], parts)) if case == "transformer_parts_cached" else None
                gc.collect()
                # Cold: the files read from the disk, not from the page cache a previous round filled.
                # (The parts' files too, except where this case keeps them loaded.)
                drop_from_page_cache(aio, alone[0], *(() if keep is not None else (Path(p.path) for p in parts)))
                started = time.perf_counter()
                pipe = load(request(aio) if case == "all_in_one" else request(alone[0], parts))
                times[case].append(time.perf_counter() - started)
                if keep is not None:
                    assert pipe.text_encoder_2 is keep.text_encoder_2  # shared, not read again
                del pipe, keep
                gc.collect()
        sizes = {"all_in_one_mb": round(aio.stat().st_size / 1e6, 1), "transformer_only_mb": round(alone[0].stat().st_size / 1e6, 1)}
    figures: dict[str, object] = {**sizes, "repeats": repeats}
    for case, values in times.items():
        figures[f"{case}_seconds"] = round(statistics.median(values), 3)
        figures[f"{case}_seconds_spread"] = spread(values)
    base = figures["all_in_one_seconds"]
    figures["transformer_cold_vs_all_in_one"] = round(figures["transformer_cold_seconds"] / base, 2)  # type: ignore[operator]
    figures["transformer_parts_cached_vs_all_in_one"] = round(figures["transformer_parts_cached_seconds"] / base, 2)  # type: ignore[operator]
    report("flux_load", figures)


if __name__ == "__main__":
    main()
