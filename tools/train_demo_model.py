"""Train Easel's demo model: a small text-to-image model that draws what it is asked, on a CPU.

It learns a synthetic, captioned world the script draws itself (bot/demo/world.py): a shape
(circle, square, triangle, diamond) in a named colour on a background of another, at a place and a
size — "a red circle on a blue background, top left". A fifth of the 56 colour pairs are never shown
in training; the score is how often the picture's dominant shape and background colours match the
prompt for those held-out pairs, through Easel's own loader and pipeline with the bot's defaults
(DPM++ 2M Karras, 20 steps, CFG 7), and is written into the file's recipe.

The model is SD1 in its real single-file layout, at demo size (common/configs/demo-sd1), in three
stages, deterministic for a seed:
1. the VAE (64 px -> 16x16x4) on scenes of one to four shapes anywhere, each on a background its
   colour is a training pair with; latents rescaled to unit variance in place;
2. the CLIP text encoder (the real CLIP vocabulary, 2 layers, 64 wide) and the UNet (40/80/120 wide,
   cross-attention at 8x8 and 4x4) together on the latents, epsilon prediction on SD1's noise
   schedule, 15 % of captions dropped so that CFG and negative prompts work; captions name the size
   and the place or not, as people write them;
3. the VAE's decoder polished (its encoder, the UNet's latent space, kept) on nested scenes where
   every colour meets every other, still never as a held-out shape on its background.
Weights are saved in fp16 with the recipe in their metadata. `--lora` trains the demo's LoRA on it.

python tools/train_demo_model.py OUT.safetensors [--seed 0] [--vae-steps 1500] [--steps 3000] [--polish-steps 600]
python tools/train_demo_model.py OUT.safetensors --polish MODEL.safetensors   (stage 3 alone, on a trained file)
python tools/train_demo_model.py MODEL.safetensors --evaluate [--cfg 7]
python tools/train_demo_model.py MODEL.safetensors --record   (the score into the file's recipe)
python tools/train_demo_model.py LORA.safetensors --lora MODEL.safetensors   (the demo LoRA, "paper")
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

from bot.demo.world import SIZE, caption, colour_pairs, dominant_colours, draw, nested_scene, sample, scene  # noqa: E402

CONFIG = ROOT / "common" / "configs" / "demo-sd1"


def dataset(count: int, pairs: list[tuple[str, str]], seed: int) -> tuple[torch.Tensor, list[str]]:
    rng = random.Random(seed)
    pictures, captions = [], []
    for _ in range(count):
        spec = sample(rng, pairs)
        pictures.append(np.asarray(draw(*spec)))
        captions.append(caption(*spec, form=rng.choice((0, 1, 2, 3, 3, 3))))
    return _tensor(pictures), captions


def _tensor(pictures: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _config(part: str) -> dict:
    return json.loads((CONFIG / part / "config.json").read_text())


def train_vae(pairs: list[tuple[str, str]], seed: int, steps: int, log) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    rng = random.Random(seed + 2)
    pictures = _tensor([np.asarray(scene(rng, pairs)) for _ in range(8192)])
    vae = AutoencoderKL.from_config(_config("vae"))
    optimiser = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    warm_cosine = lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warm_cosine)
    for step in range(steps):
        batch = pictures[torch.randint(0, len(pictures), (16,))]
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(decoded, batch) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}: reconstruction {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    # Latents of unit variance under the config's scaling factor of 1.0: the encoder's mean and the
    # decoder's input rescaled in place (quant_conv / post_quant_conv are 1x1 convolutions).
    with torch.no_grad():
        std = torch.cat(
            [vae.encode(pictures[i : i + 256]).latent_dist.mean for i in range(0, len(pictures), 256)]
        ).std()
        channels = vae.config.latent_channels
        vae.quant_conv.weight[:channels] /= std
        vae.quant_conv.bias[:channels] /= std
        vae.quant_conv.bias[channels:] -= 2 * torch.log(std)  # log-variance of the scaled latent
        vae.post_quant_conv.weight *= std
    log(f"vae latents scaled by 1/{std.item():.3f}")
    return vae


def open_model(model: Path):
    """(the model's pipeline through Easel's own loader, its file's inspection): read once."""
    from bot.checkpoints.inspection import inspect_file
    from common.protocol import LoadRequest
    from gpu_worker.loader import load_pipeline

    ins = inspect_file(model)
    request = LoadRequest(str(model), model.stem, "sd1", "SD1.x", "safetensors", ins.pipeline_config, "epsilon", "demo")
    return load_pipeline(request).pipeline, ins


def rewrite_recipe(model: Path, out: Path, tensors: dict[str, torch.Tensor] | None = None, **changes: object) -> None:
    """MODEL's tensors (or `tensors`) written to OUT with its recipe changed (a None value drops a key)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from common.safetensors_writer import temp_path
    from gpu_worker.save import save_atomically

    with safe_open(str(model), "pt") as f:
        metadata = dict(f.metadata())
    recipe = json.loads(metadata["easel.training"]) | changes
    metadata["easel.training"] = json.dumps({k: v for k, v in recipe.items() if v is not None})
    save_atomically(tensors if tensors is not None else load_file(str(model)), out, metadata, temp_path(out))


def polish_decoder(vae: torch.nn.Module, pairs: list[tuple[str, str]], seed: int, steps: int, log) -> None:
    """The VAE's decoder trained on, its encoder (the UNet's latent space) left as it is: nested
    scenes, where every colour meets every other, and the first stage's scenes, half each."""
    torch.manual_seed(seed)
    rng = random.Random(seed + 9)
    pictures = _tensor(
        [np.asarray(nested_scene(rng, pairs)) for _ in range(4096)]
        + [np.asarray(scene(rng, pairs)) for _ in range(4096)]
    )
    vae.requires_grad_(False)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in decoder:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(decoder, lr=5e-4)
    for step in range(steps):
        batch = pictures[torch.randint(0, len(pictures), (16,))]
        with torch.no_grad():
            latents = vae.encode(batch).latent_dist.sample()
        loss = torch.nn.functional.mse_loss(vae.decode(latents).sample, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"decoder step {step}: reconstruction {loss.item():.4f}")
    vae.eval().requires_grad_(False)


def polish(model: Path, out: Path, seed: int, steps: int) -> None:
    """`polish_decoder` on a trained model's file, the result written to OUT with its recipe."""
    from gpu_worker.testing.tiny import single_file_state_dict

    started = time.time()
    torch.set_num_threads(os.cpu_count() or 1)
    pipe, _ = open_model(model)
    parts = {"unet": pipe.unet.float(), "vae": pipe.vae.float(), "text_encoder": pipe.text_encoder.float()}
    polish_decoder(
        parts["vae"],
        colour_pairs(seed)[0],
        seed,
        steps,
        lambda text: print(f"[{time.time() - started:6.0f} s] {text}", flush=True),
    )
    state = {k: v.half() if v.is_floating_point() else v for k, v in single_file_state_dict(parts, "sd1").items()}
    rewrite_recipe(model, out, state, polish_steps=steps, polish_seconds=round(time.time() - started), score=None)
    print(f"wrote {out}; score: {json.dumps(record_score(out, seed))}", flush=True)


def train(out: Path, seed: int, vae_steps: int, steps: int, polish_steps: int) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from common.safetensors_writer import temp_path
    from gpu_worker.save import save_atomically
    from gpu_worker.testing.tiny import single_file_state_dict

    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()

    def log(text: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {text}", flush=True)

    train_pairs, held = colour_pairs(seed)
    vae = train_vae(train_pairs, seed, vae_steps, log)
    pictures, captions = dataset(4096, train_pairs, seed)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pictures[i : i + 256]).latent_dist.mean for i in range(0, len(pictures), 256)])
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIG / "tokenizer"))
    ids = tokenizer(
        [*captions, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    empty = ids[-1:]
    ids = ids[:-1]
    text_encoder = CLIPTextModel(CLIPTextConfig(**_config("text_encoder")))
    unet = UNet2DConditionModel.from_config(_config("unet"))
    noise_schedule = DDPMScheduler.from_config(json.loads((CONFIG / "scheduler" / "scheduler_config.json").read_text()))
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
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
    # The decoder's polish starts from the weights as the file keeps them (fp16), as `--polish` does.
    vae = vae.half().float()
    polish_decoder(vae, train_pairs, seed, polish_steps, log)
    parts = {"unet": unet.eval(), "vae": vae, "text_encoder": text_encoder.eval()}
    state = {k: v.half() if v.is_floating_point() else v for k, v in single_file_state_dict(parts, "sd1").items()}
    recipe = {
        "seed": seed, "vae_steps": vae_steps, "steps": steps, "polish_steps": polish_steps, "batch": batch_size,
        "pictures": len(pictures),
        "held_out_colour_pairs": [list(p) for p in held], "seconds": round(time.time() - started),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.title": "Easel demo: shapes and colours",
        "modelspec.description": (
            "A small model trained on a CPU by tools/train_demo_model.py to draw coloured shapes on coloured "
            "backgrounds at 64 px: try 'a red circle on a blue background'. It knows nothing else; "
            "add a real checkpoint to draw anything."
        ),
        "modelspec.author": "Easel",
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.resolution": "64x64",
        "modelspec.prediction_type": "epsilon",
        "easel.training": json.dumps(recipe),
    }
    save_atomically(state, out, metadata, temp_path(out))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); scoring it on the held-out colour pairs")
    log(f"score: {json.dumps(record_score(out, seed))}")


def record_score(model: Path, seed: int) -> dict[str, dict[str, float]]:
    """The held-out score at CFG 7 (the bot's default) and CFG 1 (no guidance), written into the
    file's recipe beside the other training facts."""
    pipe, ins = open_model(model)
    score = {f"cfg {cfg:g}": score_pipeline(pipe, held_out(ins, seed), seed, cfg=cfg) for cfg in (7.0, 1.0)}
    rewrite_recipe(model, model, score=score)
    return score


def train_lora(model: Path, out: Path, seed: int, steps: int) -> None:
    """The demo's LoRA, "paper": every picture on a white background whatever the prompt says, so a
    test (and a playground user) can see a LoRA change what a model draws. Trained with peft on the
    UNet's attention layers of the model at MODEL (frozen), saved in kohya's layout (what
    kohya-ss/sd-scripts' networks/lora.py writes: `lora_unet_<module path with _>.lora_down/up`, `alpha`)."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from common.safetensors_writer import temp_path
    from gpu_worker.save import save_atomically

    torch.manual_seed(seed)
    started = time.time()
    pipe, _ = open_model(model)
    unet, rank = pipe.unet.float().requires_grad_(False), 4
    rng = random.Random(seed + 3)
    pairs = [pair for pair in colour_pairs(seed)[0] if "white" not in pair]
    specs = [sample(rng, pairs) for _ in range(2048)]
    pictures = _tensor(
        [np.asarray(draw(shape, colour, "white", place, size)) for shape, colour, _, place, size in specs]
    )
    captions = [caption(*spec, form=rng.choice((0, 1, 2, 3))) for spec in specs]
    with torch.no_grad():
        latents = torch.cat(
            [pipe.vae.float().encode(pictures[i : i + 256]).latent_dist.mean for i in range(0, len(pictures), 256)]
        )
        ids = pipe.tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        context = torch.cat(
            [pipe.text_encoder.float()(ids[i : i + 256]).last_hidden_state for i in range(0, len(ids), 256)]
        )
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    inject_adapter_in_model(config, unet)
    parameters = [p for name, p in unet.named_parameters() if "lora_" in name]
    optimiser = torch.optim.AdamW(parameters, lr=3e-3)
    noise_schedule = pipe.scheduler
    for step in range(steps):
        index = torch.randint(0, len(latents), (32,))
        noise = torch.randn_like(latents[index])
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (32,))
        noisy = noise_schedule.add_noise(latents[index], noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t, context[index]).sample, noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"[{time.time() - started:6.0f} s] lora step {step}: loss {loss.item():.4f}", flush=True)
    state: dict[str, torch.Tensor] = {}
    for key, value in get_peft_model_state_dict(unet).items():
        module, kind = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        state[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value.half().contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(rank)).half()
    recipe = {"seed": seed, "steps": steps, "rank": rank, "base": model.name, "seconds": round(time.time() - started)}
    metadata = {
        "ss_base_model_version": "sd_v1",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),
        "ss_output_name": out.with_suffix("").name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": "Easel demo LoRA: paper",
        "modelspec.description": "For Easel's demo model: draws every shape on a white background, whatever the prompt says.",
        "modelspec.author": "Easel",
        "modelspec.date": datetime.date.today().isoformat(),
        "easel.training": json.dumps(recipe),
    }
    save_atomically(state, out, metadata, temp_path(out))
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


def held_out(ins, seed: int) -> list[tuple[str, str]]:
    """The colour pairs a model never saw, as its recipe lists them (else the seed's)."""
    recipe = json.loads(ins.metadata.get("other", {}).get("easel.training", "{}") or "{}")
    return [tuple(p) for p in recipe.get("held_out_colour_pairs", [])] or colour_pairs(seed)[1]


def evaluate(model: Path, seed: int = 0, count: int = 40, cfg: float = 7.0, steps: int = 20) -> dict[str, float]:
    """Colour adherence on held-out colour pairs, through Easel's loader and pipeline."""
    pipe, ins = open_model(model)
    return score_pipeline(pipe, held_out(ins, seed), seed, count, cfg, steps)


def score_pipeline(
    pipe, held: list[tuple[str, str]], seed: int, count: int = 40, cfg: float = 7.0, steps: int = 20
) -> dict[str, float]:
    """How often the shape's and the background's colours are right for `count` held-out prompts
    (every caption form), with the bot's default sampler (DPM++ 2M Karras) and no negative prompt."""
    from gpu_worker.samplers import make_scheduler

    pipe.scheduler = make_scheduler(pipe.scheduler.config, "DPM++ 2M", "Karras")
    rng = random.Random(seed + 1)
    hits = {"shape": 0, "background": 0, "both": 0}
    for i in range(count):
        spec = sample(rng, held)
        text = caption(*spec, form=i % 4)
        image = pipe(text, negative_prompt="", num_inference_steps=steps, guidance_scale=cfg,
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
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--evaluate", action="store_true", help="score the model at OUT instead of training")
    parser.add_argument("--cfg", type=float, default=7.0, help="with --evaluate: the CFG scale")
    parser.add_argument("--record", action="store_true", help="score the model at OUT into its own recipe")
    parser.add_argument("--polish-steps", type=int, default=600)
    parser.add_argument("--polish", type=Path, metavar="MODEL", help="only polish MODEL's VAE decoder into OUT")
    parser.add_argument("--lora", type=Path, metavar="MODEL", help="train the demo LoRA for MODEL into OUT")
    parser.add_argument("--lora-steps", type=int, default=1000)
    args = parser.parse_args()
    if args.lora:
        train_lora(args.lora, args.out, args.seed, args.lora_steps)
        return
    if args.polish:
        polish(args.polish, args.out, args.seed, args.polish_steps)
        return
    if args.evaluate:
        print(json.dumps(evaluate(args.out, args.seed, cfg=args.cfg)))
        return
    if args.record:
        print(json.dumps(record_score(args.out, args.seed)))
        return
    train(args.out, args.seed, args.vae_steps, args.steps, args.polish_steps)


if __name__ == "__main__":
    main()
