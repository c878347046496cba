"""LoRAs for the 2026 transformers (Z-Image, Qwen-Image, FLUX.2 [klein]): the LoRA store tells their base from their
module names as ai-toolkit and musubi-tuner write them, the rules offer them only to their family's
checkpoints, and the real runner applies them at their strength and leaves no trace after."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from bot.db import open_database
from bot.generation.checkpoint_ref import CheckpointRef
from bot.networks.detection import detect_adapter
from bot.networks.registry import LoraRegistry
from bot.rules.limits import Limits
from bot.rules.network_selection import resolve_loras
from common.errors import EaselError
from common.protocol import ComponentUse, JobDone, JobPart, LoadRequest, LoraUse, RunBatch
from common.tensors import TensorInfo

PARTS = {
    "z-image": (("qwen3", "text_encoders/qwen_3_4b.safetensors"), ("vae", "VAE/ae.safetensors")),
    "qwen-image": (("qwen25vl", "text_encoders/qwen_2.5_vl_7b.safetensors"), ("vae", "VAE/qwen_image_vae.safetensors")),
    "flux2": (("qwen3", "text_encoders/qwen_3_4b.safetensors"), ("vae", "VAE/flux2-vae.safetensors")),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Z-Image and Qwen-Image transformers with their parts, and a LoRA for each in models/Lora."""
    from gpu_worker.testing.tiny_flux2 import make_tiny_flux2, make_tiny_flux2_lora, make_tiny_flux2_parts
    from gpu_worker.testing.tiny_networks import make_tiny_lora
    from gpu_worker.testing.tiny_qwen_image import (
        make_tiny_qwen_image,
        make_tiny_qwen_image_lora,
        make_tiny_qwen_image_parts,
    )
    from gpu_worker.testing.tiny_z_image import make_tiny_z_image, make_tiny_z_image_lora, make_tiny_z_image_parts

    root = tmp_path_factory.mktemp("transformer-loras") / "models"
    make_tiny_z_image(root / "z-image.safetensors")
    make_tiny_z_image_parts(root)
    make_tiny_qwen_image(root / "qwen-image.safetensors")
    make_tiny_qwen_image_parts(root)
    make_tiny_flux2(root / "flux2.safetensors")
    make_tiny_flux2_parts(root)
    make_tiny_z_image_lora(root / "Lora" / "z-glow.safetensors", seed=3)
    make_tiny_flux2_lora(root / "Lora" / "flux2-glow.safetensors", seed=3)
    make_tiny_qwen_image_lora(root / "Lora" / "qwen-glow.safetensors", seed=3)
    make_tiny_lora("sd1", root / "Lora" / "sd1-ink.safetensors", seed=1)
    return root


def ref(root: Path, family: str) -> CheckpointRef:
    path = root / f"{family}.safetensors"
    ins = inspect_file(path)
    return CheckpointRef(
        family, "0" * 64, str(path), family, ins.architecture.label, "safetensors", ins.pipeline_config, "flow", True, "", True
    )


async def test_the_lora_store_tells_each_transformers_lora_and_the_rules_keep_them_to_it(models: Path, tmp_path: Path) -> None:
    db = await open_database(tmp_path / "easel.db")
    try:
        loras = LoraRegistry(db, models)
        scan = await loras.scan()
        bases = {entry.name: (entry.base, entry.loadable) for entry in scan.added}
        wanted = {"z-glow": ("z-image", True), "qwen-glow": ("qwen-image", True), "flux2-glow": ("flux2", True), "sd1-ink": ("sd1", True)}
        assert bases == wanted, bases
        [use] = await resolve_loras(loras, "a lighthouse <lora:z-glow:0.7>", ref(models, "z-image"), Limits(), True)
        assert (use.name, use.te, use.unet) == ("z-glow", 0.7, 0.7)
        for prompt, family in (("x <lora:qwen-glow:1>", "z-image"), ("x <lora:z-glow:1>", "qwen-image"), ("x <lora:sd1-ink:1>", "qwen-image")):
            with pytest.raises(EaselError, match=r"is for .* choose a"):
                await resolve_loras(loras, prompt, ref(models, family), Limits(), True)
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("keys", "base"),
    [
        # kohya's names (musubi-tuner) for each; a Flux LoRA in ComfyUI's names has an img_mlp too: Flux
        (["lora_unet_transformer_blocks_0_img_mlp_net_0_proj.lora_down.weight"], "qwen-image"),
        (["lora_unet_layers_0_attention_to_q.lora_down.weight"], "z-image"),
        (["transformer.layers.0.feed_forward.w1.lora_A.weight"], "z-image"),
        (["diffusion_model.double_blocks.0.img_mlp.0.lora_A.weight"], "flux"),
        (["lora_unet_double_blocks_0_img_mod_lin.lora_down.weight"], "flux"),
        (["transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight"], "flux2"),
    ],
)
def test_the_base_comes_from_module_names_under_any_prefix(keys: list[str], base: str) -> None:
    found = detect_adapter({k: TensorInfo(k, "F16", (4, 32)) for k in keys}, {})
    assert found is not None and found.base == base, found


@pytest.mark.parametrize(("rows", "base"), [(7 * 3072, "flux"), (9 * 3072, "flux2")])
def test_flux_and_flux2_loras_in_bfls_names_are_told_by_width(rows: int, base: str) -> None:
    """The two share BFL's names; a single block's fused input is 7 widths in FLUX.1, 9 in FLUX.2."""
    stem = "diffusion_model.single_blocks.0.linear1"
    tensors = {f"{stem}.lora_A.weight": TensorInfo("a", "BF16", (16, 3072)), f"{stem}.lora_B.weight": TensorInfo("b", "BF16", (rows, 16))}
    assert detect_adapter(tensors, {}).base == base
    assert detect_adapter(tensors, {"ss_base_model_version": "flux2_klein_4b"}).base == "flux2"
    assert detect_adapter(tensors, {"modelspec.architecture": "flux-2-klein-4b/lora"}).base == "flux2"


def test_a_chroma_lora_is_told_by_its_metadata() -> None:
    """Chroma's LoRAs target Flux's modules: only the file's own word tells them apart."""
    keys = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": TensorInfo("x", "F16", (4, 32))}
    assert detect_adapter(keys, {"modelspec.architecture": "chroma/lora"}).base == "chroma"
    assert detect_adapter(keys, {"ss_base_model_version": "chroma"}).base == "chroma"
    assert detect_adapter(keys, {}).base == "flux"


@pytest.mark.parametrize("family", ["z-image", "qwen-image", "flux2"])
def test_a_transformer_lora_applies_at_its_strength_and_leaves_no_trace(models: Path, family: str) -> None:
    from gpu_worker.cache import PipelineCache
    from gpu_worker.loader import load_pipeline
    from gpu_worker.runner import BatchRunner

    events: list[object] = []
    runner = BatchRunner("cpu", PipelineCache("cpu", 1 << 30, 0, lambda r: load_pipeline(r, "cpu")), events.append, lambda job_id: False)
    path = models / f"{family}.safetensors"
    ins = inspect_file(path)
    parts = tuple(ComponentUse(role, Path(file).name, str(models / file), role[0] * 64) for role, file in PARTS[family])
    load = LoadRequest(str(path), family, family, ins.architecture.label, "safetensors", ins.pipeline_config, "flow", family, components=parts)
    lora_file = models / "Lora" / f"{family.split('-')[0]}-glow.safetensors"

    def drawn(strength: float = 0) -> np.ndarray:
        events.clear()
        loras = (LoraUse("glow", str(lora_file), "1" * 64, "1" * 12, strength, strength),) if strength else ()
        runner.run(RunBatch.of("b", load, (JobPart("j", "a red circle", "", (7,)),), 64, 64, 3, 1.0, "Euler", "Automatic", loras=loras))
        [done] = [e for e in events if isinstance(e, JobDone)]
        return np.asarray(Image.open(io.BytesIO(done.images[0].png)), dtype=float)

    before = drawn()
    strong, weak = drawn(1.0), drawn(0.3)
    assert np.abs(strong - before).mean() > np.abs(weak - before).mean() > 0.1
    assert np.array_equal(drawn(), before)  # the adapter is off for a job without it
