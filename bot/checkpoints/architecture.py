"""Which model family a checkpoint belongs to, from its tensor names and shapes alone.

Rules after A1111 (sd_models_config.py), ComfyUI (model_detection.py) and diffusers
(single_file_utils.py). Every verdict names the key that decided it, so a surprising answer can
be checked against the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.controlnets.detection import ControlNetFileError, detect_controlnet
from bot.networks.detection import detect_embedding, is_adapter
from common.families import FAMILIES
from common.tensors import TensorInfo
from common.upscaler_detection import UpscalerFileError, detect_upscaler

UNET = "model.diffusion_model."
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SDXL_BIGG_LN = "conditioner.embedders.1.model.ln_final.weight"
SDXL_BIGG_LAYER9 = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
SDXL_REFINER_LN = "conditioner.embedders.0.model.ln_final.weight"
SD2_OPENCLIP_IN_PROJ = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
SD_CROSS_ATTN_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SD2_CROSS_ATTN_K = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
SD1_CLIP = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD1_CLIP_OLD = "cond_stage_model.transformer.embeddings.token_embedding.weight"

COMPONENT_PREFIXES: dict[str, tuple[str, ...]] = {
    "unet": (UNET,),
    "vae": ("first_stage_model.",),
    "text_encoder": ("cond_stage_model.", "conditioner.embedders.0."),
    "text_encoder_2": ("conditioner.embedders.1.",),
}


@dataclass(frozen=True)
class Architecture:
    family: str  # sd1, sd2, sdxl, sdxl-refiner, sd3, flux, lora, unknown, ...
    variant: str  # "", "inpainting", "instruct-pix2pix", "edm"
    prediction: str  # "epsilon", "v", "" (not applicable)
    label: str  # what a person reads: "SD2.x v-prediction", "SDXL base (inpainting)"
    decided_by: str  # the key (or metadata field) behind the verdict
    runnable: bool
    reason: str = ""  # why not runnable, or a caveat
    prediction_by: str = ""  # the key or metadata field that gave the prediction type
    zero_snr: bool = False  # trained with zero terminal SNR (the `ztsnr` marker key): its noise schedule is rescaled
    # Parts the file lacks and must come from the component store, with the width each must have:
    # (("clip_l", 768), ("t5xxl", 4096), ("vae", 16)) for a transformer-only Flux file.
    needs: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "needs": [list(need) for need in self.needs],
            "family": self.family,
            "variant": self.variant,
            "prediction": self.prediction,
            "prediction_by": self.prediction_by,
            "zero_snr": self.zero_snr,
            "label": self.label,
            "decided_by": self.decided_by,
            "runnable": self.runnable,
            "reason": self.reason,
        }


_FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL base"}
_RUNNABLE_FAMILIES = set(_FAMILY_LABELS)


def detect_architecture(
    tensors: Mapping[str, TensorInfo],
    metadata: Mapping[str, str] | None = None,
    extras: Mapping[str, object] | None = None,
    file_name: str = "",
) -> Architecture:
    """The file's family from its tensors; `file_name` tells what the tensors cannot (FLUX.1 Kontext
    from FLUX.1 dev). A file whose names promise a layout its shapes do not keep (a tensor missing, a
    matrix that is not one) is unusable, said in one line: the rules read widths off the shapes."""
    try:
        return _detect(tensors, metadata or {}, extras or {}, file_name)
    except (KeyError, IndexError) as e:
        reason = f"its tensors do not have the layout their names promise ({type(e).__name__}: {str(e)[:80]})"
        return Architecture("unknown", "", "", "unknown (malformed)", "", False, reason)


def _detect(
    tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str], extras: Mapping[str, object], file_name: str
) -> Architecture:
    metadata = metadata or {}
    extras = extras or {}
    keys = tensors.keys()

    def has(key: str) -> bool:
        return key in tensors

    def unusable(family: str, label: str, key: str, reason: str) -> Architecture:
        return Architecture(family, "", "", label, key, False, reason)

    if is_adapter(keys):
        key = next(k for k in keys if "lora" in k or "hada" in k or "lokr" in k)
        return unusable("lora", "LoRA (not a checkpoint)", key, "a LoRA adapter, not a full checkpoint")
    embedding = detect_embedding(tensors, metadata)
    if embedding is not None:
        label = "textual-inversion embedding (not a checkpoint)"
        return unusable("embedding", label, embedding.decided_by, "a textual-inversion embedding, not a checkpoint")
    try:
        upscaler = detect_upscaler({name: tensors[name].shape for name in keys})
    except UpscalerFileError:
        upscaler = None
    if upscaler is not None:
        first = next(iter(keys))
        return unusable(
            "upscaler", f"{upscaler.label} upscaler (not a checkpoint)", first, "an upscaler model, not a checkpoint"
        )
    try:
        controlnet = detect_controlnet({name: tuple(tensors[name].shape) for name in keys})
    except ControlNetFileError:
        controlnet = None
    if controlnet is not None:
        first = next(iter(keys))
        return unusable("controlnet", f"{controlnet.label} (not a checkpoint)", first, "a ControlNet model, not a checkpoint")
    for prefix in (FLUX_PREFIX, ""):  # before FLUX.1: FLUX.2's double blocks have the same names
        key = f"{prefix}double_stream_modulation_img.lin.weight"
        if has(key):
            return _flux2(tensors, prefix, key, metadata, file_name)
    for prefix in (FLUX_PREFIX, ""):
        key = f"{prefix}double_blocks.0.img_attn.norm.key_norm.scale"
        if has(key):
            return _flux(tensors, prefix, key, _kontext(metadata, file_name))
    for prefix in (FLUX_PREFIX, ""):
        key = f"{prefix}joint_blocks.0.context_block.adaLN_modulation.1.bias"
        if has(key) or (has(f"{prefix}x_embedder.proj.weight") and prefix):
            return _sd3(tensors, prefix, key if has(key) else f"{prefix}x_embedder.proj.weight")
    for prefix in (FLUX_PREFIX, ""):
        key = f"{prefix}cap_embedder.1.weight"
        if has(key) and has(f"{prefix}layers.0.adaLN_modulation.0.weight"):
            return _z_image(tensors, prefix, key, metadata, file_name)
    for prefix in (FLUX_PREFIX, ""):
        key = f"{prefix}txt_norm.weight"
        if has(key) and has(f"{prefix}transformer_blocks.0.img_mod.1.weight"):
            return _qwen_image(tensors, prefix, key, metadata, file_name)
    if has("clip_txt_mapper.weight") or has("down_blocks.1.0.channelwise.0.weight"):
        return unusable("stable-cascade", "Stable Cascade", "clip_txt_mapper.weight", "Stable Cascade is not supported")

    family, decided_by = _family(tensors)
    if family is None:
        if any(k.startswith(("down_blocks.", "up_blocks.")) for k in keys):
            return unusable(
                "unknown", "diffusers-format UNet only", "down_blocks.*", "a bare UNet, not a full checkpoint"
            )
        return unusable("unknown", "unknown", "", "no known model layout matched its tensor names")

    variant = ""
    unet_in = tensors.get(UNET_IN)
    if unet_in is not None and len(unet_in.shape) >= 2:
        variant = {9: "inpainting", 8: "instruct-pix2pix"}.get(unet_in.shape[1], "")
    if has("edm_mean") or has("edm_std"):
        variant = "edm"

    prediction, prediction_source = _prediction(family, tensors, metadata, extras)
    # ComfyUI supported_models.py (SDXL.model_type): `ztsnr` beside `v_pred` marks a zero-terminal-SNR
    # v-prediction model (NoobAI-XL v-pred and its merges); its sampling schedule is rescaled to match.
    zero_snr = prediction == "v" and has("ztsnr")
    label = {"sdxl-refiner": "SDXL refiner"}.get(family, _FAMILY_LABELS.get(family, family))
    if family == "sd2" and prediction == "v" and prediction_source != "assumed":
        label = "SD2.x v-prediction"
    if family == "sdxl" and prediction == "v":
        label = "SDXL v-prediction" + (", zero terminal SNR" if zero_snr else "")
    if family == "sdxl" and variant == "edm":
        label = "SDXL EDM (Playground v2.5)"
    elif variant:
        label += f" ({variant})"

    # ComfyUI supported_models.py: `edm_mean`/`edm_std` is Playground v2.5's EDM (an SDXL UNet); an
    # `edm_vpred.*` key is EDM v-prediction, which diffusers' EDM schedulers do not offer.
    edm_vpred = next((k for k in tensors if k.startswith("edm_vpred.")), None)
    runnable = (family in _RUNNABLE_FAMILIES and variant in ("", "inpainting")) or (family == "sdxl" and variant == "edm")
    if edm_vpred:
        runnable = False
    reason = ""
    if family == "sdxl-refiner":
        reason = "the SDXL refiner only refines other images; it cannot make an image from text alone"
    elif edm_vpred:
        reason = f"EDM v-prediction checkpoints ({edm_vpred}) are not supported yet"
    elif variant == "edm" and family != "sdxl":
        reason = "EDM checkpoints are supported for SDXL (Playground v2.5) only"
    elif variant == "instruct-pix2pix":
        reason = "instruct-pix2pix checkpoints edit a picture by instruction; that is not supported yet"
    elif not has(UNET_IN):
        runnable, reason = False, "the file has no UNet"
    elif prediction_source == "assumed":
        reason = "the file does not say its prediction type; assuming v-prediction, as for SD 2.x 768 models"
    by = prediction_source + (" + ztsnr" if zero_snr else "")
    return Architecture(family, variant, prediction, label, decided_by, runnable, reason, by, zero_snr)


FLUX_PREFIX = "model.diffusion_model."
# Where an all-in-one Flux file keeps each part (ComfyUI's checkpoint saver), and the tensor whose
# width the part must match: T5's hidden size is the transformer's `txt_in` input, CLIP-L's pooled
# output its `vector_in` input, the VAE's latent channels a quarter of its `img_in` input (2x2 patches).
FLUX_PARTS = {
    "clip_l": ("text_encoders.clip_l.transformer.", "vector_in.in_layer.weight"),
    "t5xxl": ("text_encoders.t5xxl.transformer.", "txt_in.weight"),
    "vae": ("vae.", "img_in.weight"),
}


def _kontext(metadata: Mapping[str, str], file_name: str) -> str:
    """What marks a FLUX.1 file as Kontext (an edit model, common/editing.py), or "" when nothing does:
    its tensors are FLUX.1 dev's, so its modelspec metadata or its name (flux1-kontext-dev.safetensors,
    as BFL ship it and Civitai and ComfyUI users keep it)."""
    for key in ("modelspec.architecture", "modelspec.title"):
        if "kontext" in metadata.get(key, "").lower():
            return key
    return "file name" if "kontext" in file_name.lower() else ""


def _flux(tensors: Mapping[str, TensorInfo], prefix: str, decided_by: str, kontext: str = "") -> Architecture:
    """FLUX.1 dev or schnell (ComfyUI model_detection: `guidance_in` marks the guidance-distilled dev),
    or Kontext dev when `kontext` names what says so; all-in-one or transformer only; what it lacks is
    listed in `needs`."""
    if f"{prefix}vector_in.in_layer.weight" not in tensors:
        if f"{prefix}distilled_guidance_layer.in_proj.weight" in tensors:
            return _chroma(tensors, prefix, decided_by)
        label = "Flux-like transformer without CLIP input (Chroma or similar)"
        return Architecture("flux", "", "", label, decided_by, False, "Flux variants without CLIP input are not supported")
    dev = f"{prefix}guidance_in.in_layer.weight" in tensors
    needs = []
    for role, (part_prefix, width_key) in FLUX_PARTS.items():
        if not any(name.startswith(part_prefix) for name in tensors):
            width = tensors[prefix + width_key].shape[1]
            needs.append((role, width // 4 if role == "vae" else width))
    variant = "schnell" if not dev else "kontext" if kontext else "dev"
    label = {"kontext": "FLUX.1 Kontext dev"}.get(variant, f"FLUX.1 {variant}") + ("" if prefix else " (transformer only)")
    by = f"{decided_by} + {kontext}" if variant == "kontext" else decided_by
    return Architecture("flux", variant, "flow", label, by, True, "", "", False, tuple(needs))


def _chroma(tensors: Mapping[str, TensorInfo], prefix: str, decided_by: str) -> Architecture:
    """Chroma (lodestones): FLUX.1's blocks without CLIP, their modulations from
    `distilled_guidance_layer` (diffusers' and ComfyUI's tell); T5-XXL and FLUX.1's VAE beside it."""
    needs = []
    for role in ("t5xxl", "vae"):
        part_prefix, width_key = FLUX_PARTS[role]
        if not any(name.startswith(part_prefix) for name in tensors):
            width = tensors[prefix + width_key].shape[1]
            needs.append((role, width // 4 if role == "vae" else width))
    label = "Chroma" + ("" if prefix else " (transformer only)")
    by = f"{decided_by} + {prefix}distilled_guidance_layer.in_proj.weight"
    return Architecture("chroma", "", "flow", label, by, True, "", "", False, tuple(needs))


# Where SD3 files keep each part: SAI's keep the VAE under `first_stage_model.` and their text
# encoders apart (sd3.5_large.safetensors); all-in-one ones carry them under `text_encoders.`.
SD3_PARTS = {
    "clip_l": ("text_encoders.clip_l.transformer.",),
    "clip_g": ("text_encoders.clip_g.transformer.",),
    "t5xxl": ("text_encoders.t5xxl.transformer.",),
    "vae": ("first_stage_model.", "vae."),
}
SD3_POOLED = {2048: (768, 1280)}  # CLIP-L's and CLIP-G's projections, concatenated


def _sd3(tensors: Mapping[str, TensorInfo], prefix: str, decided_by: str) -> Architecture:
    """SD3 Medium, SD3.5 Medium (a second attention in its first blocks) or SD3.5 Large (2432 wide),
    from the MMDiT's tensors (ComfyUI model_detection: `x_block.attn2`, `ln_q`); what the file lacks
    is listed in `needs`."""
    embed, pooled, context = (tensors.get(prefix + k) for k in ("x_embedder.proj.weight", "y_embedder.mlp.0.weight", "context_embedder.weight"))
    if embed is None or pooled is None or context is None:
        return Architecture("sd3", "", "", "SD3 (incomplete)", decided_by, False, "the file lacks the SD3 transformer's embedders")
    hidden = embed.shape[0]
    dual = any(name.startswith(prefix + "joint_blocks.") and ".x_block.attn2." in name for name in tensors)
    qk_norm = f"{prefix}joint_blocks.0.x_block.attn.ln_q.weight" in tensors
    if dual:
        variant, label = "medium", "SD3.5 Medium"
    elif qk_norm:
        variant, label = "large", "SD3.5 Large" if hidden == 2432 else f"SD3.5 ({hidden} wide)"
    else:
        variant, label = "sd3-medium", "SD3 Medium" if hidden == 1536 else f"SD3 ({hidden} wide)"
    clip_l, clip_g = SD3_POOLED.get(pooled.shape[1], (0, 0))  # 0: the file does not say
    widths = {"clip_l": clip_l, "clip_g": clip_g, "t5xxl": context.shape[1], "vae": 16}
    needs = tuple(
        (role, widths[role]) for role, starts in SD3_PARTS.items() if not any(name.startswith(starts) for name in tensors)
    )
    label += "" if prefix else " (transformer only)"
    return Architecture("sd3", variant, "flow", label, decided_by, True, "", "", False, needs)


# Where an all-in-one Z-Image file keeps its parts (ComfyUI's saver), beside the transformer.
Z_IMAGE_PARTS = {
    "qwen3": ("text_encoders.qwen3_4b.transformer.",),
    "vae": ("vae.",),
}
LUMINA2_CAPTION_WIDTH = 2304  # Gemma-2 2B's: Lumina Image 2.0 and Neta Lumina, Z-Image's forebears


def _z_image(
    tensors: Mapping[str, TensorInfo], prefix: str, decided_by: str, metadata: Mapping[str, str], file_name: str
) -> Architecture:
    """Z-Image (Tongyi-MAI's single-stream DiT; ComfyUI's `ZImage(Lumina2)`, told from Lumina 2 by its
    caption width: Qwen3-4B's 2560, not Gemma-2's 2304). Turbo and Base have the same tensors: Base
    when its name or metadata says so, else Turbo, the one released first and most fine-tuned."""
    caption = tensors[decided_by].shape[1]
    if caption == LUMINA2_CAPTION_WIDTH:
        return Architecture("lumina2", "", "", "Lumina Image 2.0", decided_by, False, "Lumina Image 2.0 is not supported")
    named = " ".join([file_name, metadata.get("modelspec.title", ""), metadata.get("modelspec.architecture", "")]).lower()
    variant = "base" if "base" in named and "turbo" not in named else "turbo"
    needs = tuple(
        (role, caption if role == "qwen3" else 16)
        for role, starts in Z_IMAGE_PARTS.items()
        if not any(name.startswith(starts) for name in tensors)
    )
    label = f"Z-Image {variant.capitalize()}" + ("" if prefix else " (transformer only)")
    return Architecture("z-image", variant, "flow", label, decided_by, True, "", "", False, needs)


# Where an all-in-one FLUX.2 [klein] file keeps its parts, beside the transformer (as Z-Image's).
FLUX2_PARTS = {"qwen3": ("text_encoders.qwen3_4b.transformer.",), "vae": ("vae.",)}


def _flux2(
    tensors: Mapping[str, TensorInfo], prefix: str, decided_by: str, metadata: Mapping[str, str], file_name: str
) -> Architecture:
    """FLUX.2 (BFL; diffusers' single-file check: `double_stream_modulation_img`): [klein] 4B and 9B,
    whose text encoder is Qwen3 (`txt_in` reads three of its layers stacked: 3 x 2560 for 4B, 3 x 4096
    for 9B), or [dev], which reads Mistral Small 3.1 and takes a guidance input. Klein's distilled and
    Base releases have the same tensors: Base when its name or metadata says so."""
    caption = tensors[f"{prefix}txt_in.weight"].shape[1]
    if f"{prefix}guidance_in.in_layer.weight" in tensors:
        return Architecture("flux2", "dev", "", "FLUX.2 dev", decided_by, False, "FLUX.2 dev (its Mistral Small 3.1 text encoder) is not supported yet; FLUX.2 [klein] is")
    named = " ".join([file_name, metadata.get("modelspec.title", ""), metadata.get("modelspec.architecture", "")]).lower()
    variant = "base" if "base" in named else "klein"
    needs = tuple(
        (role, caption // 3 if role == "qwen3" else 32)
        for role, starts in FLUX2_PARTS.items()
        if not any(name.startswith(starts) for name in tensors)
    )
    size = {7680: " 4B", 12288: " 9B"}.get(caption, "")
    label = f"FLUX.2 [klein]{size}" + (" Base" if variant == "base" else "") + ("" if prefix else " (transformer only)")
    return Architecture("flux2", variant, "flow", label, decided_by, True, "", "", False, needs)


# Where an all-in-one Qwen-Image file keeps its parts (ComfyUI's saver), beside the transformer.
QWEN_IMAGE_PARTS = {
    "qwen25vl": ("text_encoders.qwen25_7b.transformer.",),
    "vae": ("vae.",),
}


def _qwen_image(
    tensors: Mapping[str, TensorInfo], prefix: str, decided_by: str, metadata: Mapping[str, str], file_name: str
) -> Architecture:
    """Qwen-Image (Alibaba's 20B MMDiT; ComfyUI model_detection: `txt_norm` beside `img_mod`): its
    text encoder Qwen2.5-VL (`txt_in`'s input width), its VAE Wan 2.1's. Qwen-Image-Edit has the same
    tensors and is told by its name or metadata, as Kontext is from FLUX.1 dev."""
    caption = tensors[f"{prefix}txt_in.weight"].shape[1]
    named = " ".join([file_name, metadata.get("modelspec.title", ""), metadata.get("modelspec.architecture", "")]).lower()
    needs = tuple(
        (role, caption if role == "qwen25vl" else 16)
        for role, starts in QWEN_IMAGE_PARTS.items()
        if not any(name.startswith(starts) for name in tensors)
    )
    shape = "" if prefix else " (transformer only)"
    if "edit" in named:  # 2509 and 2511 take up to three pictures (diffusers' QwenImageEditPlusPipeline)
        plus = any(mark in named for mark in ("2509", "2511", "plus"))
        label = ("Qwen-Image-Edit Plus" if plus else "Qwen-Image-Edit") + shape
        return Architecture("qwen-image", "edit-plus" if plus else "edit", "flow", label, decided_by, True, "", "", False, needs)
    return Architecture("qwen-image", "", "flow", f"Qwen-Image{shape}", decided_by, True, "", "", False, needs)


def _family(tensors: Mapping[str, TensorInfo]) -> tuple[str | None, str]:
    for key in (SDXL_BIGG_LN, SDXL_BIGG_LAYER9):
        if key in tensors:
            return "sdxl", key
    if SDXL_REFINER_LN in tensors:
        return "sdxl-refiner", SDXL_REFINER_LN
    in_proj = tensors.get(SD2_OPENCLIP_IN_PROJ)
    if in_proj is not None and len(in_proj.shape) == 2 and in_proj.shape[1] == 1024:
        return "sd2", SD2_OPENCLIP_IN_PROJ
    for key in (SD2_CROSS_ATTN_K, SD_CROSS_ATTN_K):
        k = tensors.get(key)
        if k is not None and len(k.shape) == 2:
            if k.shape[1] == 1024:
                return "sd2", key
            if k.shape[1] == 768:
                return "sd1", key
    for key in (SD1_CLIP, SD1_CLIP_OLD):
        if key in tensors:
            return "sd1", key
    if UNET_IN in tensors:
        return "sd1", UNET_IN  # a UNet in the LDM layout with no other tell: the common case, SD1
    return None, ""


def _prediction(
    family: str, tensors: Mapping[str, TensorInfo], metadata: Mapping[str, str], extras: Mapping[str, object]
) -> tuple[str, str]:
    """(prediction type, where it came from). Only SD2 is ambiguous from its keys."""
    if "v_pred" in tensors:
        return "v", "v_pred"
    spec = metadata.get("modelspec.prediction_type", "").lower()
    if spec:
        return ("v" if spec.startswith("v") else "epsilon"), "modelspec.prediction_type"
    if metadata.get("ss_v_parameterization", "").lower() == "true":
        return "v", "ss_v_parameterization"
    if family != "sd2":
        return "epsilon", "family"
    step = extras.get("global_step")
    if step == 875000:  # SD 2.0/2.1 base (512, epsilon); the 768 releases are v-prediction
        return "epsilon", "global_step"
    if step in (110000, 140000):
        return "v", "global_step"
    return "v", "assumed"


NEEDS_LABELS = {
    "clip_l": "CLIP-L text encoder",
    "clip_g": "CLIP-G text encoder",
    "t5xxl": "T5-XXL text encoder",
    "qwen3": "Qwen3 text encoder",
    "qwen25vl": "Qwen2.5-VL text encoder",
    "vae": "16-channel VAE",
}


def needs_label(role: str, family: str) -> str:
    """What a part is, as a person reads it, for `family`'s checkpoints (FLUX.2's VAE has 32 channels)."""
    if role == "vae" and family in FAMILIES:
        return f"{FAMILIES[family].latent_channels}-channel VAE"
    return NEEDS_LABELS.get(role, role)
# The file names people have for each part, for advice ("put t5xxl_fp16.safetensors in models/text_encoders").
NEEDS_FILES = {
    "clip_l": "clip_l.safetensors",
    "clip_g": "clip_g.safetensors",
    "t5xxl": "t5xxl_fp16.safetensors",
    "qwen3": "qwen_3_4b.safetensors",  # Z-Image's Qwen3-4B, as Comfy-Org ship it
    "qwen25vl": "qwen_2.5_vl_7b.safetensors",  # Qwen-Image's, as Comfy-Org ship it
    "vae": "ae.safetensors",  # Flux's (Z-Image takes it too); an SD3 file carries its own (NEEDS_FILES_SD3)
}
NEEDS_FILES_SD3 = NEEDS_FILES | {"vae": "the SD3 VAE file"}
# The files a family's parts come as, where they differ from FLUX.1's.
NEEDS_FILES_OF = {
    "sd3": NEEDS_FILES_SD3,
    "qwen-image": NEEDS_FILES | {"vae": "qwen_image_vae.safetensors"},
    "flux2": NEEDS_FILES | {"vae": "flux2-vae.safetensors"},
}
# A part whose file differs by the width the checkpoint needs: FLUX.2 [klein] 9B reads Qwen3-8B.
NEEDS_FILES_BY_WIDTH = {("qwen3", 4096): "qwen_3_8b.safetensors"}
NEEDS_FOLDERS = {
    "clip_l": "models/text_encoders",
    "clip_g": "models/text_encoders",
    "t5xxl": "models/text_encoders",
    "qwen3": "models/text_encoders",
    "qwen25vl": "models/text_encoders",
    "vae": "models/VAE",
}


def describe_needs(needs: tuple[tuple[str, int], ...] | list) -> str:
    """What a file lacks, as a person reads it: "CLIP-L text encoder (768 wide), T5-XXL …"."""
    return ", ".join(
        (f"{width or 16}-channel VAE" if role == "vae" else NEEDS_LABELS.get(role, role) + (f" ({width} wide)" if width else ""))
        for role, width in needs
    )


def components(tensors: Mapping[str, TensorInfo]) -> dict[str, dict[str, object]]:
    """Per component: tensor count, parameter count and dtypes, for the parts the file holds."""
    prefixes: Mapping[str, tuple[str, ...]] = COMPONENT_PREFIXES
    flux = any(".double_blocks." in name or name.startswith("double_blocks.") for name in tensors)
    sd3 = any(".joint_blocks." in name or name.startswith("joint_blocks.") for name in tensors)
    z_image = any(name.endswith("cap_embedder.1.weight") for name in tensors)
    flux2 = any(name.endswith("double_stream_modulation_img.lin.weight") for name in tensors)
    qwen_image = any(name.endswith("txt_norm.weight") for name in tensors)
    if flux2:
        alone = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "guidance_in.", "final_layer.", "double_stream_modulation_", "single_stream_modulation.")
        transformer = (FLUX_PREFIX,) if any(name.startswith(FLUX_PREFIX) for name in tensors) else alone
        prefixes = {"transformer": transformer, **FLUX2_PARTS}
    elif qwen_image:
        alone = ("transformer_blocks.", "img_in.", "txt_in.", "txt_norm.", "time_text_embed.", "norm_out.", "proj_out.")
        transformer = (FLUX_PREFIX,) if any(name.startswith(FLUX_PREFIX) for name in tensors) else alone
        prefixes = {"transformer": transformer, **QWEN_IMAGE_PARTS}
    elif z_image:
        alone = ("layers.", "noise_refiner.", "context_refiner.", "x_embedder.", "final_layer.", "t_embedder.", "cap_embedder.", "x_pad_token", "cap_pad_token", "norm_final.")
        transformer = (FLUX_PREFIX,) if any(name.startswith(FLUX_PREFIX) for name in tensors) else alone
        prefixes = {"transformer": transformer, **Z_IMAGE_PARTS}
    elif flux or sd3:
        parts = {role: (part_prefix,) for role, (part_prefix, _) in FLUX_PARTS.items()} if flux else dict(SD3_PARTS)
        alone = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")
        if sd3:
            alone = ("joint_blocks.", "x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.", "pos_embed", "final_layer.")
        transformer = (FLUX_PREFIX,) if any(name.startswith(FLUX_PREFIX) for name in tensors) else alone
        prefixes = {"transformer": transformer, **parts}
    out: dict[str, dict[str, object]] = {}
    for component, starts in prefixes.items():
        members = [t for name, t in tensors.items() if name.startswith(starts)]
        if members:
            out[component] = {
                "tensors": len(members),
                "parameters": sum(t.numel for t in members),
                "dtypes": sorted({t.dtype for t in members}),
            }
    return out
