"""Qwen-Image (Alibaba's 20B MMDiT): the files ComfyUI users hold, as a diffusers QwenImagePipeline,
with no network.

The transformer as Comfy-Org ship it (qwen_image_bf16.safetensors, qwen_image_fp8_e4m3fn, their
scaled fp8): diffusers' own names, alone or under `model.diffusion_model.`; its text encoder Qwen2.5-VL
7B (qwen_2.5_vl_7b.safetensors, Qwen's own key names) and its VAE Wan 2.1's (qwen_image_vae.safetensors,
the original layout, read by diffusers' Wan converter), from the component store. The tokenizer is
Qwen3's files (common/bundled.py): Qwen2.5's vocabulary and special tokens are its first 151,665.

Prompts go through Qwen-Image's system template, as the pipeline does; emphasis is read as plain text.
CFG is Qwen's "true CFG" with the negative prompt (1: none), 4 by the model card's settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, partial
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus_module
from PIL import Image
from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from common.bundled import CONFIG_ROOT
from common.protocol import LoadRequest
from gpu_worker.families.base import BatchRun, Draw, StepCallback
from gpu_worker.families.flow import FlowFamily, call_pipeline
from gpu_worker.flow_prompts import plain
from gpu_worker.loaded import derived
from gpu_worker.model_parts import (
    PartError,
    Parts,
    bundled_scheduler,
    check_widths,
    config,
    load_exact,
    logical_shape,
    open_checkpoint,
    qwen3_tokenizer,
    qwen25vl_builder,
    transformer_from,
    transformer_tensors,
)

MAX_PROMPT_TOKENS = 1024  # the pipeline's


def qwen_image_pipeline(
    request: LoadRequest, dtype: torch.dtype, device: str = "cpu", config_root: Path = CONFIG_ROOT
) -> QwenImagePipeline:
    """The pipeline for a Qwen-Image checkpoint `request`; PartError says what is wrong or missing."""
    parts = open_checkpoint(request, dtype, config_root, device)
    folder = parts.folder
    transformer = _transformer(parts)
    text_encoder = parts.part("qwen25vl", qwen25vl_builder(folder, "text_encoder", dtype))
    vae = parts.part("vae", _vae_builder(folder))
    check_widths(
        request.name,
        (
            ("Qwen2.5-VL text encoder", text_encoder.config.text_config.hidden_size, transformer.config.joint_attention_dim),
            ("VAE", vae.config.z_dim, transformer.config.out_channels),
        ),
    )
    scheduler = bundled_scheduler(folder)
    return QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=qwen3_tokenizer(), transformer=transformer
    )


def _transformer(parts: Parts) -> QwenImageTransformer2DModel:
    """The transformer (its names are diffusers' already), its depth and widths from the tensors."""
    main = parts.main
    state = transformer_tensors(main)
    try:
        inner, channels = logical_shape(state["img_in.weight"])
        head = state["transformer_blocks.0.attn.norm_q.weight"].shape[0]
        settings = config(parts.folder, "transformer") | {
            "in_channels": channels,
            "out_channels": state["proj_out.weight"].shape[0] // 4,  # 2x2 patches
            "num_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")),
            "attention_head_dim": head,
            "num_attention_heads": inner // head,
            "joint_attention_dim": logical_shape(state["txt_in.weight"])[1],
        }
    except (KeyError, ValueError) as e:
        raise PartError(f"{main.path.name} is not a Qwen-Image transformer this can read (no {e})") from None
    model = transformer_from(QwenImageTransformer2DModel, settings, state, main)
    # Its rotary tables are plain attributes made in __init__ (complex numbers, which a buffer would
    # lose the imaginary half of): made again here, where the meta device left them empty.
    rope = model.pos_embed
    model.pos_embed = type(rope)(theta=rope.theta, axes_dim=rope.axes_dim, scale_rope=rope.scale_rope)
    return model


def _vae_builder(folder: Path):
    def build(where: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        if any(key.startswith("decoder.upsamples.") for key in state):  # Wan's original layout
            state = convert_wan_vae_to_diffusers(state)
        settings = config(folder, "vae")
        with torch.device("meta"):
            model = AutoencoderKLQwenImage.from_config(settings)
        load_exact(model, state, where)
        return model

    return build


@contextmanager
def _reference_area(area: int | None) -> Iterator[None]:
    """Plus reads each picture through its VAE at a megapixel (diffusers' `VAE_IMAGE_SIZE`, as ComfyUI's
    TextEncodeQwenImageEditPlus); a job smaller than that reads them at its own area. The first
    release's pipeline fixes its size inside its call: `area` None leaves it so."""
    default = edit_plus_module.VAE_IMAGE_SIZE
    if area is not None:
        edit_plus_module.VAE_IMAGE_SIZE = min(default, area)
    try:
        yield
    finally:
        edit_plus_module.VAE_IMAGE_SIZE = default


class PictureProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor for pictures alone: its video half needs torchvision, which Easel does not
    install (and an edit never reads a video)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


@cache
def picture_processor() -> PictureProcessor:
    """Qwen2.5-VL's picture processing as its preprocessor_config.json sets it: 14-pixel patches merged
    2x2, two frames a patch, between 4 and 16,384 patches, CLIP's mean and deviation."""
    pictures = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=28 * 28 * 16384, patch_size=14, merge_size=2, temporal_patch_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )  # fmt: skip
    return PictureProcessor(image_processor=pictures, tokenizer=qwen3_tokenizer())


class QwenImage(FlowFamily):
    name = "qwen-image"
    # ComfyUI comfy/latent_formats.py `Wan21` (Qwen-Image's latent format): latent_rgb_factors and bias.
    preview_map = (
        [
            [-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747], [0.0372, 0.2344, 0.1420],
            [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665], [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975],
            [-0.0412, 0.0267, -0.1364], [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
            [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950], [0.1984, 0.0913, 0.1861],
        ],
        [-0.1835, -0.0868, -0.3360],
    )  # fmt: skip

    edits = True  # Qwen-Image-Edit (the first release, and Plus)
    img2img_pipeline = QwenImageImg2ImgPipeline  # it takes the Wan VAE's latents as they are
    inpaint_pipeline = QwenImageInpaintPipeline

    def build(self, request: LoadRequest, dtype: torch.dtype, device: str) -> QwenImagePipeline:
        return qwen_image_pipeline(request, dtype, device)

    def edit(self, run: BatchRun, draw: Draw, callback: StepCallback, arguments: dict, size: tuple[int, int]) -> list[Image.Image]:
        """Qwen-Image-Edit: the pictures read by Qwen2.5-VL beside the instruction (each resized by the
        pipeline to its own reading sizes) and by the VAE, as diffusers' edit pipelines read them."""
        plus = run.batch.load.variant == "edit-plus"
        factory = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
        pipe = derived(run.loaded, run.batch.load.variant or "edit", partial(factory, processor=picture_processor()))
        cfg = run.batch.parameters.cfg
        pictures = list(run.references)
        edit_arguments = {
            "prompt": [plain(t) for t in draw.prompts],
            "negative_prompt": [plain(t) or " " for t in draw.negatives] if cfg > 1 else None,
            "true_cfg_scale": max(cfg, 1.0),
            "image": pictures if plus else pictures[0],
        }
        with _reference_area(size[0] * size[1] if plus else None):
            return call_pipeline(run, pipe, draw, callback, edit_arguments, run.batch.parameters.steps, size)

    def text_inputs(self, run: BatchRun, draw: Draw) -> dict:
        if run.references:  # an edit reads its prompts with its pictures (`edit`)
            return {}
        pipe, cfg = run.loaded.pipeline, run.batch.parameters.cfg
        embeds, mask = pipe.encode_prompt(prompt=[plain(t) for t in draw.prompts], max_sequence_length=MAX_PROMPT_TOKENS)
        inputs = {"prompt_embeds": embeds, "prompt_embeds_mask": mask, "true_cfg_scale": max(cfg, 1.0)}
        if cfg > 1:
            negative, negative_mask = pipe.encode_prompt(
                prompt=[plain(t) or " " for t in draw.negatives], max_sequence_length=MAX_PROMPT_TOKENS
            )
            inputs |= {"negative_prompt_embeds": negative, "negative_prompt_embeds_mask": negative_mask}
        return inputs


QWEN_IMAGE = QwenImage()
