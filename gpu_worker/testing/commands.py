"""`python -m gpu_worker make-tiny-…`: tiny random-weight model files in the real single-file
layouts, for tests, benches and the demo. They load through exactly the path users' files take."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from common.bundled import TINY_CHECKPOINT_KINDS as CHECKPOINT_KINDS
from common.bundled import TINY_FORMATS, TINY_LORA_BASES
from common.control import ANNOTATOR_LAYOUTS

Handler = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """The make-tiny-… subcommands on `sub`, and the function that runs each."""
    p = sub.add_parser("make-tiny-checkpoint")
    p.add_argument("--arch", choices=CHECKPOINT_KINDS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inpainting", action="store_true", help="a 9-channel UNet, as inpainting models have")
    p.add_argument("--fp8", action="store_true", help="Flux: the transformer's matrices as float8_e4m3fn")
    p.add_argument("--format", choices=TINY_FORMATS, default="plain", help="flow models: the transformer quantised as ComfyUI's files are")
    p.add_argument("--parts", metavar="MODELS_DIR", help="transformer-only Flux: also its parts, in MODELS_DIR/text_encoders and MODELS_DIR/VAE")
    p.add_argument("out")
    p = sub.add_parser("make-tiny-component")
    p.add_argument(
        "--kind", choices=("clip-l", "t5xxl", "flux-vae", "sd3-clip-l", "sd3-clip-g", "sd3-t5xxl", "clip-vision"), required=True
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    for name in ("make-tiny-lora", "make-tiny-embedding"):
        p = sub.add_parser(name)
        p.add_argument("--base", choices=TINY_LORA_BASES if name == "make-tiny-lora" else ("sd1", "sd2", "sdxl"), required=True)
        p.add_argument("--seed", type=int, default=0)
        if name == "make-tiny-lora":
            p.add_argument("--locon", action="store_true", help="LyCORIS LoCon: the ResNet convolutions too")
        else:
            p.add_argument("--vectors", type=int, default=2)
        p.add_argument("out")
    p = sub.add_parser("make-tiny-vae")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    p = sub.add_parser("make-tiny-controlnet")
    p.add_argument("--base", choices=("sd1", "sd2", "sdxl", "flux"), required=True)
    p.add_argument("--layout", choices=("original", "diffusers", "union"), default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    p = sub.add_parser("make-tiny-ip-adapter")
    p.add_argument("--base", choices=("sd1", "sdxl"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    p = sub.add_parser("make-tiny-annotator")
    p.add_argument("--kind", choices=ANNOTATOR_LAYOUTS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    p = sub.add_parser("make-tiny-detector")
    p.add_argument("--task", choices=("detect", "segment"), default="detect")
    p.add_argument("--classes", default="face")
    p.add_argument("out")
    p = sub.add_parser("make-tiny-upscaler")
    p.add_argument("--layout", choices=("esrgan", "realesrgan", "compact"), default="esrgan")
    p.add_argument("--scale", type=int, choices=(1, 2, 4, 8), default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("out")
    return {
        "make-tiny-checkpoint": _make_tiny_checkpoint,
        "make-tiny-component": _make_tiny_transformer,
        "make-tiny-lora": _make_tiny_network,
        "make-tiny-embedding": _make_tiny_network,
        "make-tiny-vae": _make_tiny_vae,
        "make-tiny-controlnet": _make_tiny_controlnet,
        "make-tiny-ip-adapter": _make_tiny_ip_adapter,
        "make-tiny-upscaler": _make_tiny_upscaler,
        "make-tiny-annotator": _make_tiny_annotator,
        "make-tiny-detector": _make_tiny_detector,
    }


def _make_tiny_checkpoint(args: argparse.Namespace) -> int:
    if args.format.startswith("gguf-") != args.out.lower().endswith(".gguf"):
        print(f"error: {args.out}: a GGUF file's name ends in .gguf, and only a GGUF file's does", file=sys.stderr)
        return 1
    if args.arch.startswith(("z-image", "qwen-image", "flux2")):
        return _make_tiny_z_image(args)
    if args.arch.startswith(("flux", "sd35", "chroma")):
        return _make_tiny_transformer(args)
    from gpu_worker.testing.tiny import make_tiny_checkpoint

    try:
        if args.format != "plain":
            raise ValueError("--format is for the flow models' files (Flux, SD3.5, Z-Image)")
        out = make_tiny_checkpoint(args.arch, Path(args.out), seed=args.seed, inpainting=args.inpainting)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kind = f"{args.arch} inpainting" if args.inpainting else args.arch
    print(f"wrote {out} (tiny {kind}, seed {args.seed}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _plain_out(args: argparse.Namespace) -> Path:
    """Where the plain file is made: OUT, or for a GGUF file a hidden sibling it is converted from."""
    out = Path(args.out)
    if not getattr(args, "format", "plain").startswith("gguf-"):
        return out
    return out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.safetensors")


def _written(make: Callable[[], Path], what: str) -> int:
    """One file made: "wrote OUT (WHAT, SIZE)", or its one-line error."""
    try:
        out = make()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({what}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _make_tiny_vae(args: argparse.Namespace) -> int:
    from gpu_worker.testing.tiny import make_tiny_vae

    return _written(lambda: make_tiny_vae(args.base, Path(args.out), args.seed), f"tiny {args.base} VAE, seed {args.seed}")


def _make_tiny_controlnet(args: argparse.Namespace) -> int:
    from gpu_worker.testing.tiny_controlnet import make_tiny_controlnet

    if not args.out.lower().endswith((".safetensors", ".pth")) or (args.base == "flux" and not args.out.lower().endswith(".safetensors")):
        print(f"error: {args.out}: a ControlNet file ends in .safetensors or .pth (a Flux one in .safetensors)", file=sys.stderr)
        return 1
    what = f"tiny {args.base} ControlNet, {args.layout or 'default'} layout, seed {args.seed}"
    return _written(lambda: make_tiny_controlnet(args.base, Path(args.out), args.seed, args.layout), what)


def _make_tiny_ip_adapter(args: argparse.Namespace) -> int:
    from gpu_worker.testing.tiny_controlnet import make_tiny_ip_adapter

    if not args.out.lower().endswith(".safetensors"):
        print(f"error: {args.out}: an IP-Adapter file here ends in .safetensors", file=sys.stderr)
        return 1
    what = f"tiny {args.base} IP-Adapter for the tiny clip-vision encoder, seed {args.seed}"
    return _written(lambda: make_tiny_ip_adapter(args.base, Path(args.out), args.seed), what)


def _make_tiny_annotator(args: argparse.Namespace) -> int:
    from gpu_worker.testing.tiny_annotator import make_tiny_annotator

    if not args.out.lower().endswith((".pth", ".safetensors")):
        print(f"error: {args.out}: an annotator file ends in .pth or .safetensors", file=sys.stderr)
        return 1
    what = f"random-weight {args.kind} annotator, seed {args.seed}"
    return _written(lambda: make_tiny_annotator(args.kind, Path(args.out), args.seed), what)


def _make_tiny_detector(args: argparse.Namespace) -> int:
    from gpu_worker.testing.tiny_detector import make_tiny_detector

    if not args.out.lower().endswith((".pt", ".pth")):
        print(f"error: {args.out}: a detector file ends in .pt", file=sys.stderr)
        return 1
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    what = f"tiny YOLOv8 {args.task} model of {', '.join(classes)} that finds bright spots"
    return _written(lambda: make_tiny_detector(Path(args.out), args.task, classes), what)


def _make_tiny_transformer(args: argparse.Namespace) -> int:
    """`--arch flux[-schnell][-transformer]`: all-in-one or transformer only; `--arch sd35…`: SAI's
    shape or all-in-one; or one component for them."""
    from gpu_worker.testing.quantise import quantise_file
    from gpu_worker.testing.tiny_flux import make_tiny_chroma, make_tiny_component, make_tiny_flux, make_tiny_flux_parts
    from gpu_worker.testing.tiny_sd3 import make_tiny_sd3

    parts: list[Path] = []
    try:
        if args.command == "make-tiny-component" and args.kind == "clip-vision":  # IP-Adapters' encoder
            from gpu_worker.testing.tiny_controlnet import make_tiny_clip_vision

            out, kind = make_tiny_clip_vision(Path(args.out), args.seed), args.kind
        elif args.command == "make-tiny-component":
            out, kind = make_tiny_component(args.kind, Path(args.out), args.seed), args.kind
        elif args.inpainting:
            raise ValueError("there are no Flux or SD3 inpainting checkpoints to imitate")
        elif args.arch == "chroma":  # as lodestones ship it: the transformer alone
            if args.fp8:
                raise ValueError("--fp8 is for the tiny Flux files; --format fp8-scaled quantises any")
            out, kind = make_tiny_chroma(_plain_out(args), args.seed), args.arch
            parts = make_tiny_flux_parts(Path(args.parts), args.seed) if args.parts else []
        elif args.arch.startswith("sd35"):
            if args.fp8:
                raise ValueError("--fp8 is for the tiny Flux files")
            out, kind = make_tiny_sd3(_plain_out(args), args.arch, args.seed), args.arch
        else:
            # FLUX.1 Kontext ships as BFL's transformer-only file (flux1-kontext-dev.safetensors)
            shape = "transformer" if args.arch.endswith(("-transformer", "-kontext")) else "all-in-one"
            if args.parts and shape != "transformer":
                raise ValueError("--parts is for the transformer-only Flux files; an all-in-one file holds its parts")
            kontext, schnell = args.arch == "flux-kontext", "schnell" in args.arch
            if args.fp8 and args.format != "plain":
                raise ValueError("--fp8 and --format fp8-scaled are two kinds of fp8 file; give one")
            out = make_tiny_flux(_plain_out(args), args.seed, shape, schnell=schnell, fp8=args.fp8, kontext=kontext)
            kind = args.arch + (" fp8" if args.fp8 else "")
            parts = make_tiny_flux_parts(Path(args.parts), args.seed) if args.parts else []
        family = "chroma" if args.command != "make-tiny-component" and args.arch == "chroma" else "flux"
        family = "sd3" if args.command != "make-tiny-component" and args.arch.startswith("sd35") else family
        out = quantise_file(out, getattr(args, "format", "plain"), family, Path(args.out))
        kind += "" if getattr(args, "format", "plain") == "plain" else f" {args.format}"
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (tiny {kind}, seed {args.seed}, {out.stat().st_size / 1e6:.1f} MB)")
    for part in parts:
        print(f"wrote {part} (its part, seed {args.seed})")
    return 0


def _make_tiny_z_image(args: argparse.Namespace) -> int:
    """`--arch z-image`, `qwen-image` or `flux2-klein`: the transformer alone, as Comfy-Org and BFL ship it (with `--parts`,
    its text encoder and VAE too, where a user keeps them); `…-all-in-one`: everything in one file."""
    from gpu_worker.testing.quantise import quantise_file
    from gpu_worker.testing.tiny_flux2 import make_tiny_flux2, make_tiny_flux2_parts
    from gpu_worker.testing.tiny_qwen_image import make_tiny_qwen_image, make_tiny_qwen_image_parts
    from gpu_worker.testing.tiny_z_image import make_tiny_z_image, make_tiny_z_image_parts

    qwen, flux2 = args.arch.startswith("qwen-image"), args.arch.startswith("flux2")
    make, make_parts = (make_tiny_qwen_image, make_tiny_qwen_image_parts) if qwen else (make_tiny_z_image, make_tiny_z_image_parts)
    if flux2:
        make, make_parts = make_tiny_flux2, make_tiny_flux2_parts

    try:
        if args.inpainting or args.fp8:
            raise ValueError("--inpainting and --fp8 are not offered for the tiny Z-Image, Qwen-Image and FLUX.2 files")
        shape = "all-in-one" if args.arch.endswith("all-in-one") else "transformer"
        if args.parts and shape != "transformer":
            raise ValueError("--parts is for the transformer-only file; an all-in-one file holds its parts")
        edit = {"edit": True} if args.arch == "qwen-image-edit" else {}  # Qwen-Image-Edit Plus, as 2509 and 2511
        edit = {"base": True} if args.arch == "flux2-klein-base" else edit
        made = make(_plain_out(args), args.seed, shape, **edit)
        out = quantise_file(made, args.format, "qwen-image" if qwen else "flux2" if flux2 else "z-image", Path(args.out))
        parts = make_parts(Path(args.parts), args.seed) if args.parts else []
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kind = args.arch + ("" if args.format == "plain" else f" {args.format}")
    print(f"wrote {out} (tiny {kind}, seed {args.seed}, {out.stat().st_size / 1e6:.1f} MB)")
    for part in parts:
        print(f"wrote {part} (its part, seed {args.seed})")
    return 0


def _make_tiny_network(args: argparse.Namespace) -> int:
    from gpu_worker.testing.tiny_networks import make_tiny_embedding, make_tiny_lora

    try:
        if args.command == "make-tiny-lora" and args.base in ("z-image", "qwen-image", "flux2"):
            if args.locon:
                raise ValueError("--locon is for the SD LoRAs (their ResNet convolutions)")
            out, what = _transformer_lora(args.base)(Path(args.out), args.seed), "LoRA"
        elif args.command == "make-tiny-lora":
            out = make_tiny_lora(args.base, Path(args.out), seed=args.seed, locon=args.locon)
            what = "LoCon" if args.locon else "LoRA"
        else:
            out, what = make_tiny_embedding(args.base, Path(args.out), args.seed, args.vectors), "embedding"
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} (tiny {args.base} {what}, seed {args.seed}, {out.stat().st_size / 1e3:.0f} kB)")
    return 0


def _transformer_lora(base: str) -> Callable[[Path, int], Path]:
    if base == "flux2":
        from gpu_worker.testing.tiny_flux2 import make_tiny_flux2_lora

        return make_tiny_flux2_lora
    if base == "z-image":
        from gpu_worker.testing.tiny_z_image import make_tiny_z_image_lora

        return make_tiny_z_image_lora
    from gpu_worker.testing.tiny_qwen_image import make_tiny_qwen_image_lora

    return make_tiny_qwen_image_lora


def _make_tiny_upscaler(args: argparse.Namespace) -> int:
    from gpu_worker.testing.tiny_upscalers import make_tiny_upscaler

    try:
        out = make_tiny_upscaler(Path(args.out), args.layout, args.scale, args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {out} (tiny {args.layout} {args.scale}x upscaler, seed {args.seed}, {out.stat().st_size / 1e3:.0f} kB)"
    )
    return 0
