"""The GPU acceptance check: every family on every path through Easel's real worker code (the batch
runner, its cache, placement, VAE gateway), each picture checked, timed and measured against a bare
diffusers call of the same work on the same pipeline.

    python bench/gpu_check.py                                  # the first CUDA device, real shapes, random weights
    python bench/gpu_check.py --checkpoint sdxl=/models/x.safetensors --checkpoint flux=/models/f.safetensors
    python bench/gpu_check.py --cpu --quick                    # the same logic on the tiny models in fp16 on a CPU

Per family (SD1.5, SDXL, FLUX.1, SD3.5; Z-Image, Qwen-Image and FLUX.2 [klein] with --families) and path (txt2img, img2img, inpaint, hires through
Latent/Lanczos/an ESRGAN model, a LoRA switched in, two ControlNet units (SD and FLUX.1), the detail pass on SD (faces, then hands by a YOLO detector file),
previews on, offloaded as the placement a small card gets): whether the pictures are finite and not black, seconds per step and peak device memory. The
txt2img path also runs as a bare diffusers call (same pipeline, size, steps): the ratio of Easel's
s/it and peak memory to it. Then an out-of-memory error injected into a pipeline call (the batch is
retried a picture at a time and must finish), and a cache filled past its budget with one more model
loaded. Without --checkpoint a family runs with random weights in its real shapes (built from the
bundled configs on the device): random weights can overflow half precision in the model itself,
so a picture that is not finite counts as Easel's fault only where the bare call's was finite.

Writes bench/results/gpu_check-DATE.json with the device's name; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from bench.harness import report
from common.bundled import CONFIG_ROOT, QWEN3_TOKENIZER
from common.control import ControlUnit
from common.families import FAMILIES as FAMILY_ROWS
from common.protocol import (
    BatchFailed,
    ComponentUse,
    ControlNetUse,
    DetectorUse,
    JobDone,
    JobPart,
    LoadRequest,
    LoraUse,
    RunBatch,
    UpscalerUse,
)
from gpu_worker.cache import PipelineCache, pipeline_bytes
from gpu_worker.families.flux2 import encoder_layers
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.loader import build_pipeline, default_dtype, place
from gpu_worker.placement import FP8, GROUP, OFFLOAD, apply
from gpu_worker.runner import BatchRunner

# family -> (real config, tiny config, prediction, size, steps)
FAMILIES = {
    "sd1": ("sd1", "tiny-sd1", "epsilon", 512, 20),
    "sdxl": ("sdxl", "tiny-sdxl", "epsilon", 1024, 20),
    "flux": ("flux", "tiny-flux", "flow", 1024, 20),
    "sd3": ("sd3", "tiny-sd3", "flow", 1024, 20),
    "z-image": ("z-image", "tiny-z-image", "flow", 1024, 8),
    "qwen-image": ("qwen-image", "tiny-qwen-image", "flow", 1328, 20),
    "flux2": ("flux2-klein", "tiny-flux2-klein", "flow", 1024, 4),
}
# Run when --families is not given: the four the acceptance run was written for; the 2026 families
# (Qwen-Image is 55 GB in bf16) are named with --families.
DEFAULT_FAMILIES = ("sd1", "sdxl", "flux", "sd3")
SD_PATHS = (
    "txt2img", "img2img", "inpaint", "hires Latent", "hires Lanczos", "hires ESRGAN", "LoRA", "ControlNet", "detail",
    "previews", "offloaded",
)  # fmt: skip
FLOW_PATHS = ("txt2img", "img2img", "inpaint", "hires Lanczos", "ControlNet", "previews", "offloaded")
CONTROL_FAMILIES = ("sd1", "sd2", "sdxl", "flux")  # those ControlNet runs on (bot/rules/limits.py)
FROM_PICTURE = ("img2img", "hires Lanczos")  # the paths a family without img2img (common/families.py) skips


@dataclass
class Setup:
    device: str
    quick: bool
    precision: str
    folder: Path  # LoRAs, upscalers and pictures made for the run


@contextmanager
def default_dtype_of(dtype: torch.dtype):
    """Modules built in `dtype` from the start: a 12B model is not made in float32 first."""
    was = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(was)


def random_pipeline(config: str, dtype: torch.dtype, device: str):
    """A pipeline in a bundled config's shapes with random weights, built on `device`."""
    import diffusers
    import transformers

    folder = CONFIG_ROOT / config
    index = json.loads((folder / "model_index.json").read_text())
    parts: dict[str, object] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue
        library, class_name = entry
        if library is None:
            parts[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        where = folder / name
        if "Tokenizer" in class_name:  # Z-Image's and Qwen-Image's Qwen tokenizer: from its package
            parts[name] = cls.from_pretrained(where if where.is_dir() else QWEN3_TOKENIZER)
        elif name == "scheduler":
            parts[name] = cls.from_config(cls.load_config(where))
        elif library == "diffusers":
            with default_dtype_of(dtype), torch.device(device):
                parts[name] = cls.from_config(cls.load_config(where)).to(dtype).eval()
        else:
            config_object = transformers.AutoConfig.from_pretrained(where)
            with default_dtype_of(dtype), torch.device(device):
                parts[name] = cls(config_object).to(dtype).eval()  # a few layers are made in float32 regardless
    pipeline_class = getattr(diffusers, index["_class_name"])
    if "requires_safety_checker" in inspect.signature(pipeline_class).parameters:
        parts["requires_safety_checker"] = False
    pipeline = pipeline_class(**parts)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def request_for(family: str, setup: Setup, checkpoint: Path | None) -> LoadRequest:
    real, tiny, prediction, _, _ = FAMILIES[family]
    if checkpoint is not None:
        from bot.checkpoints.inspection import inspect_file

        ins = inspect_file(checkpoint)
        return LoadRequest(str(checkpoint), checkpoint.stem, family, ins.architecture.label, ins.format, ins.pipeline_config, prediction, checkpoint.stem)  # fmt: skip
    config = tiny if setup.quick else real
    return LoadRequest(str(CONFIG_ROOT / config), f"random-{config}", family, family, "diffusers", config, prediction, f"random-{config}")  # fmt: skip


def loader(setup: Setup, checkpoints: dict[str, Path]):
    def load(request: LoadRequest) -> LoadedPipeline:
        dtype = default_dtype(setup.device, request.family, setup.precision)
        if request.family in checkpoints:
            return build_pipeline(request, setup.device, dtype)
        pipeline = random_pipeline(request.pipeline_config or "", dtype, "cpu" if setup.quick else setup.device)
        return LoadedPipeline(pipeline, request, "cpu", dtype, 0.0, dict(pipeline.scheduler.config))

    return load


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: str) -> int:
    return int(torch.cuda.max_memory_allocated(device)) if device.startswith("cuda") else 0


def verdict(pictures: list[np.ndarray]) -> dict[str, object]:
    finite = all(np.isfinite(p).all() for p in pictures)
    black = any(p.mean() < 2 and p.std() < 2 for p in pictures)  # a NaN decode is saved as black
    return {"finite": bool(finite), "not_black": not black}


def png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def make_lora(pipeline, folder: Path, name: str) -> Path:
    """A random LoRA in diffusers' PEFT layout for the pipeline's denoiser (attention projections)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    attribute = "transformer" if getattr(pipeline, "transformer", None) is not None else "unet"
    denoiser = getattr(pipeline, attribute)
    denoiser.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"]), "check"
    )
    state = {k: v.detach().to("cpu", torch.float32) for k, v in get_peft_model_state_dict(denoiser, adapter_name="check").items()}
    denoiser.delete_adapters("check")
    out = folder / name
    type(pipeline).save_lora_weights(str(out), **{f"{attribute}_lora_layers": state})
    return out / "pytorch_lora_weights.safetensors"


def make_controlnet(pipeline, folder: Path, name: str) -> Path:
    """A ControlNet copied from the pipeline's UNet (as one is trained from), in diffusers' layout."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    model = ControlNetModel.from_unet(pipeline.unet)
    out = folder / f"{name}-controlnet.safetensors"
    save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}, str(out))
    del model
    return out


def make_flux_controlnet(pipeline, folder: Path, name: str) -> Path:
    """A Flux ControlNet copied from the pipeline's transformer (two double blocks, as InstantX's are
    trained from it), in diffusers' layout."""
    from diffusers import FluxControlNetModel
    from safetensors.torch import save_file

    config = pipeline.transformer.config
    model = FluxControlNetModel.from_transformer(
        pipeline.transformer, num_layers=2, num_single_layers=0,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
    )  # fmt: skip
    out = folder / f"{name}-controlnet.safetensors"
    save_file({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}, str(out))
    del model
    return out


def pictures_for(setup: Setup, size: int) -> tuple[bytes, bytes]:
    picture = Image.new("RGB", (size, size), (200, 60, 40))
    picture.paste((40, 160, 60), (size // 4, size // 4, size * 3 // 4, size * 3 // 4))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 8, size // 8, size // 2, size // 2))
    out = []
    for image in (picture, mask):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


def batch_for(
    request: LoadRequest, path: str, setup: Setup, lora: Path | None, upscaler: Path | None, controlnet: Path | None = None
) -> RunBatch:
    _, _, _, size, steps = FAMILIES[request.family]
    if setup.quick:
        size, steps = 64, 4
    flow = request.prediction == "flow"
    options: dict[str, object] = {"cfg": 3.5 if flow else 7.0}
    picture, mask = pictures_for(setup, size)
    if path in ("img2img", "inpaint"):
        options |= {"init_png": picture, "strength": 0.6}
    if path == "inpaint":
        options["mask_png"] = mask
    if path.startswith("hires"):
        options |= {"hires_scale": 1.5, "hires_denoise": 0.5, "hires_upscaler": path.split(" ", 1)[1]}
        if path == "hires ESRGAN" and upscaler is not None:
            options |= {"hires_upscaler": upscaler.stem, "hires_model": UpscalerUse(upscaler.stem, str(upscaler), "e" * 64, 4)}
    if path == "LoRA" and lora is not None:
        options["loras"] = (LoraUse("check", str(lora), "c" * 64, "c" * 12, 0.8, 0.8),)
    if path == "previews":
        options["preview_every"] = 2
    if path == "ControlNet" and controlnet is not None:  # two units, canny and tile, on the one model
        units = (ControlUnit("a" * 64, "canny", threshold_a=100.0, threshold_b=200.0), ControlUnit("b" * 64, "tile_resample", threshold_a=1.0))
        use = ControlNetUse(controlnet.stem, str(controlnet), "d" * 64, "d" * 8, request.family, layout="flux" if flow else "")
        options |= {"control": units, "controlnets": (use, use), "control_pngs": (picture, picture)}
    if path == "detail":  # faces (one the check says is there), then hands by a YOLO file on the device
        from gpu_worker.testing.tiny_detector import make_tiny_detector

        hands = setup.folder / "hand_yolov8n.pt"
        if not hands.exists():
            make_tiny_detector(hands, classes=("hand",))
        options["detail"] = "both"
        options["detectors"] = (DetectorUse("faces"), DetectorUse("hands", ComponentUse("detect", hands.name, str(hands), "f" * 64)))
    return RunBatch.of(f"check-{path}", request, (JobPart("j", "a lighthouse on a cliff at dusk", "", (1, 2)),), size, size, steps, model_name=request.name, **options)  # fmt: skip


def _white_corner(picture: Image.Image) -> Image.Image:
    marked = picture.copy()
    marked.paste((255, 255, 255), (0, 0, max(2, picture.width // 16), max(2, picture.height // 16)))
    return marked


def run_batch(cache: PipelineCache, batch: RunBatch, device: str) -> dict[str, object]:
    events: list[object] = []
    runner = BatchRunner(device, cache, events.append, lambda job_id: False)
    if batch.parameters.detail:  # random weights draw no face: one in the middle, as the detector would say
        runner.safety.faces = lambda picture, confidence: [(picture.width // 4, picture.height // 4, picture.width // 2, picture.height // 2)]
    if batch.detectors:  # the tiny hand detector finds white: it is shown each picture with a white corner
        passes = runner._detail_passes(batch)
        runner._detail_passes = lambda _: [(use, lambda picture, c, find=find: find(_white_corner(picture), c)) for use, find in passes]
    peak_reset(device)
    synchronize(device)
    started = time.perf_counter()
    runner.run(batch)
    synchronize(device)
    seconds = time.perf_counter() - started
    done = [e for e in events if isinstance(e, JobDone)]
    if not done:
        failed = [e.message for e in events if isinstance(e, BatchFailed)]
        return {"ok": False, "error": failed[0] if failed else "no result"}
    pictures = [png_pixels(image.png) for image in done[0].images]
    steps = batch.total_steps
    return {
        "ok": True,
        **verdict(pictures),
        "seconds": round(seconds, 3),
        "inference_s_per_step": round(done[0].inference_seconds / max(steps, 1), 4),
        "peak_gb": round(peak(device) / 1e9, 3),
    }


def bare_call(cache: PipelineCache, request: LoadRequest, batch: RunBatch, device: str) -> dict[str, object]:
    """The same txt2img work as one plain diffusers call on the same pipeline."""
    loaded, _ = cache.get(request)
    pipe = loaded.pipeline
    peak_reset(device)
    synchronize(device)
    started = time.perf_counter()
    extra = {}
    if "text_encoder_out_layers" in inspect.signature(pipe.__call__).parameters:  # FLUX.2: the layers Easel reads
        extra["text_encoder_out_layers"] = encoder_layers(pipe.text_encoder.config.num_hidden_layers)
    images = pipe(
        **extra,
        prompt=["a lighthouse on a cliff at dusk"] * 2,
        width=batch.width,
        height=batch.height,
        num_inference_steps=batch.parameters.steps,
        guidance_scale=batch.parameters.cfg,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (1, 2)],
        output_type="np",
    ).images
    synchronize(device)
    seconds = time.perf_counter() - started
    pictures = [np.nan_to_num(image * 255, nan=0.0) for image in images]
    return {
        **verdict(pictures),
        "s_per_step": round(seconds / batch.parameters.steps, 4),
        "peak_gb": round(peak(device) / 1e9, 3),
    }


def check_family(family: str, setup: Setup, checkpoint: Path | None, paths: list[str]) -> dict[str, object]:
    request = request_for(family, setup, checkpoint)
    checkpoints = {family: checkpoint} if checkpoint else {}
    budget = 1 << 40

    def placed(loaded: LoadedPipeline) -> None:
        place(loaded, setup.device, budget)

    cache = PipelineCache(setup.device, budget, 0, loader(setup, checkpoints), placed)
    loaded, _ = cache.get(request)
    flow = request.prediction == "flow"
    # The ControlNet first: the LoRA maker leaves PEFT's wrappers on the UNet's layers.
    controlnet = None
    if "ControlNet" in paths and family in CONTROL_FAMILIES:
        controlnet = (make_flux_controlnet if flow else make_controlnet)(loaded.pipeline, setup.folder, family)
    lora = make_lora(loaded.pipeline, setup.folder, family) if not flow and "LoRA" in paths else None
    upscaler = None
    if "hires ESRGAN" in paths and not flow:
        from gpu_worker.testing.tiny_upscalers import make_tiny_upscaler

        upscaler = make_tiny_upscaler(setup.folder / "esrgan-check.safetensors")
    results: dict[str, object] = {}
    takes_pictures = FAMILY_ROWS[family].from_picture
    runs = [p for p in (FLOW_PATHS if flow else SD_PATHS) if p in paths and (takes_pictures or p not in FROM_PICTURE)]
    for path in [p for p in runs if p != "ControlNet" or controlnet is not None]:
        batch = batch_for(request, "txt2img" if path == "offloaded" else path, setup, lora, upscaler, controlnet)
        if path == "offloaded":  # as on a card smaller than the model: the placement it would get
            results[path] = {}
            for placement in (OFFLOAD, FP8, GROUP) if flow else (OFFLOAD, GROUP):
                offloaded = PipelineCache(setup.device, budget, 0, loader(setup, checkpoints), lambda loaded, p=placement: _force(loaded, p, setup.device))  # fmt: skip
                results[path][placement] = run_batch(offloaded, replace(batch, batch_id=f"check-{placement}"), setup.device)
                del offloaded
            continue
        results[path] = run_batch(cache, batch, setup.device)
        if path == "txt2img":
            bare = bare_call(cache, request, batch, setup.device)
            easel = results[path]
            results["bare diffusers txt2img"] = bare
            if easel.get("ok") and bare["s_per_step"]:
                easel["s_per_step_vs_bare"] = round(easel["inference_s_per_step"] / bare["s_per_step"], 3)
                easel["peak_vs_bare"] = round(easel["peak_gb"] / bare["peak_gb"], 3) if bare["peak_gb"] else None
                # random weights that overflow in the model itself are the model's, not Easel's
                easel["blame_easel"] = bool(bare["finite"] and bare["not_black"]) and not (easel["finite"] and easel["not_black"])
    if "oom" in paths:
        results["out of memory once"] = out_of_memory_once(cache, request, setup)
    return results


def _force(loaded: LoadedPipeline, placement: str, device: str) -> None:
    loaded.placement = placement
    apply(loaded.pipeline, placement, device, loaded.dtype)
    loaded.device = device


def out_of_memory_once(cache: PipelineCache, request: LoadRequest, setup: Setup) -> dict[str, object]:
    """A pipeline call that runs out of memory once: the batch must finish, a picture at a time."""
    loaded, _ = cache.get(request)
    pipeline_class = type(loaded.pipeline)
    real = pipeline_class.__call__
    calls: list[int] = []

    def once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by gpu_check)")
        return real(self, *args, **kwargs)

    pipeline_class.__call__ = once
    try:
        outcome = run_batch(cache, batch_for(request, "txt2img", setup, None, None), setup.device)
    finally:
        pipeline_class.__call__ = real
    again = run_batch(cache, batch_for(request, "txt2img", setup, None, None), setup.device)
    return {"recovered": bool(outcome.get("ok")), "calls": len(calls), "next_job_ok": bool(again.get("ok"))}


def cache_past_budget(setup: Setup, families: list[str], checkpoints: dict[str, Path]) -> dict[str, object]:
    """Room for about two of the models: loading every one evicts, and the last job still runs."""
    requests = [request_for(f, setup, checkpoints.get(f)) for f in families]
    sizes = []
    probe = loader(setup, checkpoints)
    for request in requests[:2]:
        loaded = probe(request)
        sizes.append(pipeline_bytes(loaded.pipeline))
        del loaded
    budget = int(sum(sizes) * 1.1)
    cache = PipelineCache(setup.device, budget, 0, loader(setup, checkpoints), lambda loaded: place(loaded, setup.device, budget))
    outcomes = [run_batch(cache, batch_for(r, "txt2img", setup, None, None), setup.device).get("ok") for r in requests]
    return {
        "budget_gb": round(budget / 1e9, 3),
        "models": len(requests),
        "evictions": cache.stats.evictions,
        "every_job_ok": all(outcomes),
        "device_gb_after": round(cache.device_bytes() / 1e9, 3),
    }


def failures(results: dict[str, object]) -> list[str]:
    found = []
    for family, paths in results["families"].items():
        for path, outcome in paths.items():
            cases = outcome.values() if path == "offloaded" else [outcome]
            for case in cases:
                if "ok" in case and not case["ok"]:
                    found.append(f"{family} {path}: {case.get('error')}")
                elif case.get("blame_easel"):
                    found.append(f"{family} {path}: black or NaN where the bare call was not")
                elif path == "out of memory once" and not (case["recovered"] and case["next_job_ok"]):
                    found.append(f"{family}: not recovered from out of memory")
    if not results.get("cache past budget", {}).get("every_job_ok", True):
        found.append("cache past its budget: a job failed")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --quick: what CI can run)")
    parser.add_argument("--quick", action="store_true", help="the tiny models at 64 px, 4 steps, in fp16")
    parser.add_argument("--checkpoint", action="append", default=[], help="FAMILY=PATH: a real file for a family")
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help=f"which of {', '.join(FAMILIES)} (default: {', '.join(DEFAULT_FAMILIES)})")
    parser.add_argument("--paths", default=",".join(dict.fromkeys((*SD_PATHS, *FLOW_PATHS, "oom", "cache"))), help="which paths")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu (--quick for the tiny models)", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else "cuda:0"
    checkpoints = {}
    for item in args.checkpoint:
        family, _, path = item.partition("=")
        if family not in FAMILIES or not Path(path).is_file():
            print(f"--checkpoint {item}: FAMILY=PATH with a family of {', '.join(FAMILIES)} and a file", file=sys.stderr)
            return 2
        checkpoints[family] = Path(path)
    families = [f for f in args.families.split(",") if f in FAMILIES]
    paths = args.paths.split(",")
    with tempfile.TemporaryDirectory() as folder:
        setup = Setup(device, args.quick, "half" if args.quick else "auto", Path(folder))
        results: dict[str, object] = {
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
            "torch": torch.__version__,
            "quick": args.quick,
            "precision": setup.precision,
            "weights": {f: str(checkpoints.get(f, "random, real shapes" if not args.quick else "random, tiny")) for f in families},
            "families": {},
        }
        for family in families:
            started = time.perf_counter()
            results["families"][family] = check_family(family, setup, checkpoints.get(family), paths)
            print(f"{family}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if len(families) >= 3 and "cache" in paths:
            results["cache past budget"] = cache_past_budget(setup, families, checkpoints)
    results["failures"] = failures(results)
    report("gpu_check", results)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
