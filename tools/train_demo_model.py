"""Train Easel's demo model: a small text-to-image model that draws what it is asked, on a CPU.

It learns a synthetic, captioned world the script draws itself: a shape (circle, square, triangle,
diamond) in a named colour on a background of another, at a place and a size — "a red circle on a
blue background, top left, small". A fifth of the colour pairs are never shown in training; the
score is how often the picture's dominant shape and background colours match the prompt for those
held-out pairs (`--evaluate`), through Easel's own loader and pipeline.

The model is SD1 in its real single-file layout, only small (gpu_worker/configs/demo-sd1): a VAE
trained first on the pictures (64 px -> 8x8x4, latents scaled to unit variance), then the CLIP text
encoder (the real CLIP vocabulary, 2 layers, 64 wide) and the UNet together on the latents, epsilon
prediction on SD1's noise schedule, with captions dropped now and then so that CFG and negative prompts
work (15% dropped). Deterministic for a seed. Weights are saved in fp16 with the recipe in their metadata.

python tools/train_demo_model.py OUT.safetensors [--seed 0] [--vae-steps N] [--steps N]
python tools/train_demo_model.py MODEL.safetensors --evaluate [--cfg 7]

Not shipped yet: the first models learn the background colour (all held-out pairs right at CFG 2)
but not yet the shape's (see the issue's note for the figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

CONFIG = ROOT / "gpu_worker" / "configs" / "demo-sd1"
SIZE = 64
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond")
PLACES = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7), "in the middle": (0.5, 0.5)}
SIZES = {"small": 0.2, "large": 0.34}


def colour_pairs(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training pairs, held-out pairs) of (shape colour, background colour): a fifth held out."""
    pairs = [(a, b) for a in COLOURS for b in COLOURS if a != b]
    random.Random(seed).shuffle(pairs)
    held = len(pairs) // 5
    return pairs[held:], pairs[:held]


def draw(shape: str, colour: str, background: str, place: str, size: str) -> Image.Image:
    picture = Image.new("RGB", (SIZE, SIZE), COLOURS[background])
    pen = ImageDraw.Draw(picture)
    cx, cy = (v * SIZE for v in PLACES[place])
    r = SIZES[size] * SIZE / 2 * 1.25
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return picture


def caption(shape: str, colour: str, background: str, place: str, size: str) -> str:
    return f"a {size} {colour} {shape} on a {background} background, {place}"


def sample(rng: random.Random, pairs: list[tuple[str, str]]) -> tuple[str, str, str, str, str]:
    colour, background = rng.choice(pairs)
    return rng.choice(SHAPES), colour, background, rng.choice(list(PLACES)), rng.choice(list(SIZES))


def dataset(count: int, pairs: list[tuple[str, str]], seed: int) -> tuple[torch.Tensor, list[str]]:
    rng = random.Random(seed)
    pictures, captions = [], []
    for _ in range(count):
        spec = sample(rng, pairs)
        pictures.append(np.asarray(draw(*spec)))
        captions.append(caption(*spec))
    tensor = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return tensor, captions


def _config(part: str) -> dict:
    return json.loads((CONFIG / part / "config.json").read_text())


def train_vae(pictures: torch.Tensor, steps: int, log) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(_config("vae"))
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for step in range(steps):
        batch = pictures[torch.randint(0, len(pictures), (16,))]
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(decoded, batch) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}: reconstruction {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    # Latents of unit variance under the config's scaling factor of 1.0: the encoder's mean and the
    # decoder's input rescaled in place (quant_conv / post_quant_conv are 1x1 convolutions).
    with torch.no_grad():
        std = torch.cat([vae.encode(pictures[i : i + 256]).latent_dist.mean for i in range(0, len(pictures), 256)]).std()
        channels = vae.config.latent_channels
        vae.quant_conv.weight[:channels] /= std
        vae.quant_conv.bias[:channels] /= std
        vae.quant_conv.bias[channels:] -= 2 * torch.log(std)  # log-variance of the scaled latent
        vae.post_quant_conv.weight *= std
    log(f"vae latents scaled by 1/{std.item():.3f}")
    return vae


def train(out: Path, seed: int, vae_steps: int, steps: int) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from bot.checkpoints.safetensors_writer import temp_path
    from gpu_worker.save import save_atomically
    from gpu_worker.tiny import single_file_state_dict

    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()

    def log(text: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {text}", flush=True)

    train_pairs, held = colour_pairs(seed)
    pictures, captions = dataset(4096, train_pairs, seed)
    vae = train_vae(pictures, vae_steps, log)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pictures[i : i + 256]).latent_dist.mean for i in range(0, len(pictures), 256)])
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIG / "tokenizer"))
    ids = tokenizer([*captions, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty = ids[-1:]
    ids = ids[:-1]
    text_encoder = CLIPTextModel(CLIPTextConfig(**_config("text_encoder")))
    unet = UNet2DConditionModel.from_config(_config("unet"))
    noise_schedule = DDPMScheduler.from_config(json.loads((CONFIG / "scheduler" / "scheduler_config.json").read_text()))
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    batch_size = 64
    for step in range(steps):
        index = torch.randint(0, len(latents), (batch_size,))
        batch_ids = ids[index].clone()
        dropped = torch.rand(batch_size) < 0.15  # the empty prompt, for classifier-free guidance
        batch_ids[dropped] = empty
        x0 = latents[index]
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch_size,))
        noisy = noise_schedule.add_noise(x0, noise, t)
        context = text_encoder(batch_ids).last_hidden_state
        predicted = unet(noisy, t, context).sample
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f}")
    parts = {"unet": unet.eval(), "vae": vae, "text_encoder": text_encoder.eval()}
    state = {k: v.half() if v.is_floating_point() else v for k, v in single_file_state_dict(parts, "sd1").items()}
    recipe = {
        "seed": seed, "vae_steps": vae_steps, "steps": steps, "batch": batch_size, "pictures": len(pictures),
        "held_out_colour_pairs": [list(p) for p in held], "seconds": round(time.time() - started),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.title": "Easel demo: shapes and colours",
        "modelspec.description": (
            "A small model trained on a CPU by tools/train_demo_model.py to draw coloured shapes on coloured "
            "backgrounds at 64 px: try 'a red circle on a blue background, top left'. It knows nothing else; "
            "add a real checkpoint to draw anything."
        ),
        "modelspec.author": "Easel",
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.resolution": "64x64",
        "modelspec.prediction_type": "epsilon",
        "easel.training": json.dumps(recipe),
    }
    save_atomically(state, out, metadata, temp_path(out))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name], dtype=float) - rgb) ** 2)))


def dominant_colours(picture: Image.Image) -> tuple[str, str]:
    """(shape colour, background colour) by pixel counting: the background is the colour most of the
    border pixels are nearest to; the shape, the commonest other colour among the rest."""
    pixels = np.asarray(picture.convert("RGB"), dtype=float)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    names = [nearest_colour(p) for p in border]
    background = max(set(names), key=names.count)
    inner = [nearest_colour(p) for p in pixels[4:-4, 4:-4].reshape(-1, 3)]
    others = [name for name in inner if name != background]
    return (max(set(others), key=others.count) if others else background), background


def evaluate(model: Path, seed: int = 0, count: int = 40, cfg: float = 7.0) -> dict[str, float]:
    """Colour adherence on held-out colour pairs, through Easel's loader and pipeline."""
    from bot.checkpoints.inspection import inspect_file
    from gpu_worker.loader import load_pipeline
    from gpu_worker.protocol import LoadRequest

    ins = inspect_file(model)  # read once: its recipe and its config
    recipe = json.loads(ins.metadata.get("other", {}).get("easel.training", "{}") or "{}")
    held = [tuple(p) for p in recipe.get("held_out_colour_pairs", [])] or colour_pairs(seed)[1]
    request = LoadRequest(str(model), model.stem, "sd1", "SD1.x", "safetensors", ins.pipeline_config, "epsilon", "demo")
    pipe = load_pipeline(request).pipeline
    rng = random.Random(seed + 1)
    hits = {"shape": 0, "background": 0, "both": 0}
    for i in range(count):
        spec = sample(rng, held)
        image = pipe(caption(*spec), negative_prompt="", num_inference_steps=20, guidance_scale=cfg,
                     generator=torch.Generator("cpu").manual_seed(i), height=SIZE, width=SIZE).images[0]  # fmt: skip
        shape, background = dominant_colours(image)
        hits["shape"] += shape == spec[1]
        hits["background"] += background == spec[2]
        hits["both"] += shape == spec[1] and background == spec[2]
    return {key: value / count for key, value in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--evaluate", action="store_true", help="score the model at OUT instead of training")
    parser.add_argument("--cfg", type=float, default=7.0, help="with --evaluate: the CFG scale")
    args = parser.parse_args()
    if args.evaluate:
        print(json.dumps(evaluate(args.out, args.seed, cfg=args.cfg)))
        return
    train(args.out, args.seed, args.vae_steps, args.steps)


if __name__ == "__main__":
    main()
