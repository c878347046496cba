"""Architecture detection from tensor names and shapes, one case per family and variant."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.checkpoints.architecture import detect_architecture
from bot.checkpoints.inspection import inspect_file
from common.tensors import TensorInfo

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


def tensors(entries: dict[str, tuple[int, ...]]) -> dict[str, TensorInfo]:
    return {name: TensorInfo(name, "F16", shape) for name, shape in entries.items()}


SD1 = {
    UNET_IN: (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
}
SD2 = {
    UNET_IN: (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
}
SDXL = {
    UNET_IN: (320, 4, 3, 3),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.ln_final.weight": (1280,),
}

CASES = [
    # (id, tensors, metadata, extras, label, decided_by, runnable)
    ("sd1", SD1, {}, {}, "SD1.x", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", True),
    ("sd1-inpainting", {**SD1, UNET_IN: (320, 9, 3, 3)}, {}, {}, "SD1.x (inpainting)", "attn2.to_k", True),
    ("sd1-pix2pix", {**SD1, UNET_IN: (320, 8, 3, 3)}, {}, {}, "SD1.x (instruct-pix2pix)", "attn2.to_k", False),
    ("sd2-unknown-prediction", SD2, {}, {}, "SD2.x", "resblocks.0.attn.in_proj_weight", True),
    ("sd2-v-key", {**SD2, "v_pred": (0,)}, {}, {}, "SD2.x v-prediction", "in_proj_weight", True),
    ("sd2-v-modelspec", SD2, {"modelspec.prediction_type": "v"}, {}, "SD2.x v-prediction", "in_proj_weight", True),
    ("sd2-eps-modelspec", SD2, {"modelspec.prediction_type": "epsilon"}, {}, "SD2.x", "in_proj_weight", True),
    ("sd2-base-global-step", SD2, {}, {"global_step": 875000}, "SD2.x", "in_proj_weight", True),
    ("sd2-inpainting", {**SD2, UNET_IN: (320, 9, 3, 3)}, {}, {}, "SD2.x (inpainting)", "in_proj_weight", True),
    (
        "sd2-by-cross-attention",
        {
            UNET_IN: (320, 4, 3, 3),
            "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        },
        {},
        {},
        "SD2.x",
        "attn2.to_k.weight",
        True,
    ),
    ("sdxl", SDXL, {}, {}, "SDXL base", "conditioner.embedders.1.model.ln_final.weight", True),
    (
        "sdxl-by-layer9",
        {UNET_IN: (320, 4, 3, 3), "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,)},
        {},
        {},
        "SDXL base",
        "resblocks.9.mlp.c_proj.bias",
        True,
    ),
    ("sdxl-inpainting", {**SDXL, UNET_IN: (320, 9, 3, 3)}, {}, {}, "SDXL base (inpainting)", "ln_final", True),
    (
        "sdxl-edm",
        {**SDXL, "edm_mean": (1, 4, 1, 1), "edm_std": (1, 4, 1, 1)},
        {},
        {},
        "SDXL EDM (Playground v2.5)",
        "ln_final",
        True,
    ),
    (
        "sdxl-refiner",
        {UNET_IN: (384, 4, 3, 3), "conditioner.embedders.0.model.ln_final.weight": (1280,)},
        {},
        {},
        "SDXL refiner",
        "conditioner.embedders.0.model.ln_final.weight",
        False,
    ),
    ("sd3-incomplete", {"model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2)}, {}, {}, "SD3 (incomplete)", "x_embedder", False),
    ("sd3-bare", {"joint_blocks.0.context_block.adaLN_modulation.1.bias": (1,)}, {}, {}, "SD3 (incomplete)", "joint_blocks", False),
    (
        "sd3-medium-sai",
        {
            "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
            "model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2),
            "model.diffusion_model.y_embedder.mlp.0.weight": (1536, 2048),
            "model.diffusion_model.context_embedder.weight": (1536, 4096),
            "first_stage_model.decoder.conv_in.weight": (512, 16, 3, 3),
        },
        {},
        {},
        "SD3 Medium",
        "joint_blocks",
        True,
    ),
    (
        "flux-without-clip-input",  # Chroma and the like
        {"double_blocks.0.img_attn.norm.key_norm.scale": (128,)},
        {},
        {},
        "Flux-like transformer without CLIP input (Chroma or similar)",
        "double_blocks",
        False,
    ),
    (
        "flux-schnell-transformer",
        {
            "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
            "vector_in.in_layer.weight": (3072, 768),
            "txt_in.weight": (3072, 4096),
            "img_in.weight": (3072, 64),
        },
        {},
        {},
        "FLUX.1 schnell (transformer only)",
        "double_blocks",
        True,
    ),
    (
        "flux-dev-prefixed",
        {
            "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": (128,),
            "model.diffusion_model.vector_in.in_layer.weight": (3072, 768),
            "model.diffusion_model.guidance_in.in_layer.weight": (3072, 256),
            "model.diffusion_model.txt_in.weight": (3072, 4096),
            "model.diffusion_model.img_in.weight": (3072, 64),
            "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": (768,),
            "text_encoders.t5xxl.transformer.shared.weight": (32128, 4096),
            "vae.decoder.conv_in.weight": (512, 16, 3, 3),
        },
        {},
        {},
        "FLUX.1 dev",
        "double_blocks",
        True,
    ),
    (
        "lora",
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)},
        {},
        {},
        "LoRA (not a checkpoint)",
        "lora_unet",
        False,
    ),
    (
        "diffusers-unet",
        {"down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)},
        {},
        {},
        "diffusers-format UNet only",
        "down_blocks",
        False,
    ),
    ("unknown", {"some.weight": (3,)}, {}, {}, "unknown", "", False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_detects(case: tuple) -> None:
    _, entries, metadata, extras, label, decided_by, runnable = case
    arch = detect_architecture(tensors(entries), metadata, extras)
    assert arch.label == label
    assert decided_by in arch.decided_by
    assert arch.runnable is runnable
    if not runnable:
        assert arch.reason, "a refusal must say why"


def test_sd2_without_prediction_hint_says_it_assumed() -> None:
    arch = detect_architecture(tensors(SD2))
    assert arch.prediction == "v" and "assuming v-prediction" in arch.reason


@pytest.mark.parametrize(
    "arch,label,config",
    [("sd1", "SD1.x", "tiny-sd1"), ("sd2", "SD2.x v-prediction", "tiny-sd2"), ("sdxl", "SDXL base", "tiny-sdxl")],
)
def test_tiny_checkpoints_look_like_their_architecture(tiny_dir: Path, arch: str, label: str, config: str) -> None:
    ins = inspect_file(tiny_dir / f"tiny-{arch}.safetensors")
    assert ins.architecture.label == label
    assert ins.runnable and ins.pipeline_config == config
    expected_components = {"unet", "vae", "text_encoder"} | ({"text_encoder_2"} if arch == "sdxl" else set())
    assert set(ins.components) == expected_components
    assert ins.metadata["modelspec"]["title"].startswith("Easel tiny")


@pytest.mark.parametrize(
    "entries",
    [
        # each transformer family's tell, with the widths the rules read missing or not matrices
        {"double_blocks.0.img_attn.norm.key_norm.scale": (4,), "vector_in.in_layer.weight": (3,)},
        {"double_blocks.0.img_attn.norm.key_norm.scale": (4,), "distilled_guidance_layer.in_proj.weight": (3, 3)},
        {"joint_blocks.0.context_block.adaLN_modulation.1.bias": (4,), "x_embedder.proj.weight": (2,)},
        {"txt_norm.weight": (4,), "transformer_blocks.0.img_mod.1.weight": (3,), "txt_in.weight": (5,)},
        {"txt_norm.weight": (4,), "transformer_blocks.0.img_mod.1.weight": (3,)},
        {"cap_embedder.1.weight": (4,), "layers.0.adaLN_modulation.0.weight": (3,)},
    ],
)
def test_a_layout_its_shapes_do_not_keep_is_unusable_in_one_line(entries: dict[str, tuple[int, ...]], tmp_path: Path) -> None:
    """Hostile or broken files: the tell of a family without the tensors its rules measure."""
    import torch
    from safetensors.torch import save_file

    arch = detect_architecture(tensors(entries))
    assert not arch.runnable and "\n" not in arch.reason and arch.reason, arch
    path = tmp_path / "odd.safetensors"
    save_file({name: torch.zeros(shape) for name, shape in entries.items()}, str(path))
    assert not inspect_file(path).runnable  # and inspect says so, rather than failing
