"""A generation request as a front end sends it, its limits, and its validation.

Validation happens before anything is queued or sent to a GPU: every problem is one clear line.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, replace

from bot.generation.checkpoint_ref import CheckpointRef
from bot.untrusted import has_lone_surrogate
from common.errors import EaselError
from common.hires_upscalers import LATENT_UPSCALERS, parse_upscaler
from common.prompt_schedule import prompt_schedule
from common.prompt_syntax import parse_prompt
from common.protocol import (
    FLOW_FAMILIES,
    MASKED_CONTENT,
    EmbeddingUse,
    LoraUse,
    UpscalerUse,
    VaeUse,
    config_parts,
    denoising_steps,
    hires_size,
)
from common.samplers import (
    DEFAULT_SAMPLER,
    EDM_SAMPLERS,
    FLOW_DEFAULT_SAMPLER,
    FLOW_SAMPLERS,
    ZERO_SNR_SAMPLERS,
    parse_sampler,
)


class GenerationError(EaselError):
    """A request was refused; the message tells the requester what to change."""


# The bot's ceilings, defined once: servers may only lower them (bot/guilds/settings.py), and the
# slash commands offer the same ranges.
MAX_STEPS = 150
MAX_CFG = 30.0
MAX_PICTURES_PER_COMMAND = 4  # /imagine's count; the CLI may ask up to Limits.max_count
MAX_LORA_WEIGHT = 4.0  # either strength of a LoRA, either sign (slider LoRAs go past 1)


@dataclass(frozen=True)
class Limits:
    min_size: int = 64
    max_size: int = 2048
    max_pixels: int = 2048 * 2048
    max_steps: int = MAX_STEPS
    max_cfg: float = MAX_CFG
    max_count: int = 8
    max_clip_skip: int = 12
    max_batch_images: int = 4  # images per pipeline call when batching compatible jobs
    max_queued_per_user: int = 3
    max_queue: int = 100
    cooldown_seconds: float = 0.0  # between one user's requests
    max_prompt_chars: int = 8000
    max_loras: int = 5  # LoRAs one prompt may apply
    max_lora_weight: float = MAX_LORA_WEIGHT


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    requester_id: str
    negative: str = ""
    width: int | None = None  # None: the checkpoint's native size
    height: int | None = None
    steps: int = 20
    cfg: float = 7.0
    sampler: str = DEFAULT_SAMPLER
    schedule: str | None = None  # None: the sampler's default (A1111's "Automatic")
    seed: int = -1  # -1: random; the seed used is always reported
    count: int = 1
    clip_skip: int = 1
    requester_name: str = ""
    guild_id: str | None = None
    channel_id: str | None = None
    init_image: str | None = None  # img2img: the sha256 of a kept input picture (bot/images/inputs.py)
    strength: float = 0.75  # A1111's "Denoising strength": how much of the input is redrawn
    resize_mode: str = "crop"  # how the input meets the job's size; see RESIZE_MODES
    mask_image: str | None = None  # inpainting: the sha256 of a kept mask (white = redraw), with init_image
    mask_blur: int = 4  # A1111's "Mask blur": the mask's Gaussian blur radius, in pixels
    masked_content: str = "original"  # A1111's "Masked content" (common/protocol.py MASKED_CONTENT)
    only_masked: bool = False  # A1111's "Inpaint area": False = Whole picture, True = Only masked
    mask_padding: int = 32  # A1111's "Masked area padding", with only_masked
    hires_scale: float = 0.0  # A1111's hires fix: 0 = off, else pass two's size factor (1-4)
    hires_steps: int = 0  # pass two's steps; 0 = as many as pass one
    hires_denoise: float = 0.7  # pass two's denoising strength
    hires_upscaler: str = "Latent"  # common/hires_upscalers.py
    cfg_rescale: float = 0.0  # "CFG Rescale φ" (Lin et al. 2023): 0 = off, 0.7 the paper's choice
    vae: str | None = None  # a registered VAE's name or hash; "none": the checkpoint's own; None: its default
    distilled_cfg: float = 3.5  # Forge's "Distilled CFG Scale": Flux dev's guidance input (cfg > 1 adds true CFG)


MAX_MASK_PADDING = 256  # A1111's slider goes to 256
DEFAULT_DISTILLED_CFG = 3.5  # Forge's and ComfyUI's FluxGuidance default for Flux dev
# (steps, CFG) a flow model runs with when the job names none, by family and variant: FLUX.1 with
# CFG 1 (its guidance is distilled; schnell in 4 steps, BFL's model card), SD3.x as SAI's model cards
# run them (SD3.5 Large 28 steps at 3.5, SD3.5 Medium 40 at 4.5, SD3 Medium 28 at 7). None: the place's.
FLOW_DEFAULTS: dict[tuple[str, str], tuple[int | None, float]] = {
    ("flux", "dev"): (None, 1.0),
    ("flux", "schnell"): (4, 1.0),
    ("sd3", "large"): (28, 3.5),
    ("sd3", "medium"): (40, 4.5),
    ("sd3", "sd3-medium"): (28, 7.0),
}


def family_defaults(checkpoint: CheckpointRef, steps: int, cfg: float, sampler: str) -> tuple[int, float, str]:
    """(steps, CFG, sampler) for a job that names none: the place's defaults, which are for SD
    checkpoints; a flow model (Flux, SD3) takes its own as Forge's and ComfyUI's presets do: Euler,
    and its model card's steps and CFG (FLOW_DEFAULTS)."""
    if checkpoint.family not in FLOW_FAMILIES:
        return steps, cfg, sampler
    own_steps, own_cfg = FLOW_DEFAULTS.get((checkpoint.family, checkpoint.variant), (None, cfg))
    return own_steps or steps, own_cfg, FLOW_DEFAULT_SAMPLER

# A1111's img2img "Resize mode" (modules/images.py resize_image), by the names we take.
RESIZE_MODES = {"resize": "Just resize", "crop": "Crop and resize", "fill": "Resize and fill"}


@dataclass(frozen=True)
class ValidRequest:
    """A request after validation: every value final, seeds drawn."""

    request: GenerationRequest
    checkpoint: CheckpointRef
    width: int
    height: int
    sampler: str
    schedule: str
    seeds: tuple[int, ...]
    notes: tuple[str, ...] = ()  # what the requester should know, e.g. tags that were not applied
    loras: tuple[LoraUse, ...] = ()  # resolved from the prompt's <lora:…> tags by bot/rules/network_selection.py
    embeddings: tuple[EmbeddingUse, ...] = ()  # registered embeddings whose names the texts use
    init_png: bytes | None = None  # img2img: the input picture itself (plain RGB PNG)
    mask_png: bytes | None = None  # inpainting: the mask itself
    hires_model: UpscalerUse | None = None  # the hires fix's upscaler, when it is a model file
    vae: VaeUse | None = None  # the VAE in place of the checkpoint's own (bot/components/registry.py)

    @property
    def denoising_steps(self) -> int:
        """Steps actually run: img2img runs `steps × strength` of them, as A1111 does by default."""
        if self.request.init_image is None:
            return self.request.steps
        return denoising_steps(self.request.steps, self.request.strength)


# Characters that draw nothing although Unicode files some of them as letters or symbols.
_BLANK_LETTERS = frozenset("\u115f\u1160\u2800\u3164\uffa0")
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})


def has_visible_text(text: str) -> bool:
    """Whether `text` has a character that shows: zero-width spaces and joiners alone do not count."""
    return any(ch not in _BLANK_LETTERS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in text)


def random_seed() -> int:
    return random.randrange(4294967294)  # A1111's range


def check_texts(request: GenerationRequest, limits: Limits) -> None:
    """The prompt and negative prompt as text: not empty, valid, within the length limit."""
    if not has_visible_text(request.prompt):
        raise GenerationError("the prompt is empty; describe the picture you want")
    for label, text in (("prompt", request.prompt), ("negative prompt", request.negative)):
        if has_lone_surrogate(text):
            raise GenerationError(f"the {label} holds characters that are not valid text; retype it")
        if len(text) > limits.max_prompt_chars:
            raise GenerationError(f"the {label} is {len(text):,} characters; the limit is {limits.max_prompt_chars:,}")


def validate(
    request: GenerationRequest,
    checkpoint: CheckpointRef,
    limits: Limits,
    loras: tuple[LoraUse, ...] = (),
    embeddings: tuple[EmbeddingUse, ...] = (),
    notes: tuple[str, ...] = (),
    init_png: bytes | None = None,
    mask_png: bytes | None = None,
    hires_model: UpscalerUse | None = None,
    vae: VaeUse | None = None,
) -> ValidRequest:
    """Every value checked and made final; LoRAs and embeddings were resolved beforehand
    (bot/rules/network_selection.py), with `notes` on what of them was not applied."""
    check_texts(request, limits)
    notes = _unused_tags(request) + notes
    if not checkpoint.runnable:
        raise GenerationError(f"{checkpoint.name} ({checkpoint.architecture}) cannot be run: {checkpoint.reason}")
    if not checkpoint.present:
        raise GenerationError(f"{checkpoint.name} is missing from the models directory; an admin needs to rescan")
    width = request.width or checkpoint.native_size
    height = request.height or checkpoint.native_size
    for label, value in (("width", width), ("height", height)):
        if value % 8:
            raise GenerationError(f"{label} {value} is not a multiple of 8")
        if not limits.min_size <= value <= limits.max_size:
            raise GenerationError(f"{label} {value} is outside {limits.min_size}-{limits.max_size}")
    if width * height > limits.max_pixels:
        raise GenerationError(f"{width}x{height} is over the {limits.max_pixels / 1e6:.1f}-megapixel limit")
    if not 1 <= request.steps <= limits.max_steps:
        raise GenerationError(f"steps must be between 1 and {limits.max_steps}, not {request.steps}")
    if not 0 <= request.cfg <= limits.max_cfg:
        raise GenerationError(f"CFG scale must be between 0 and {limits.max_cfg:g}, not {request.cfg:g}")
    if not 1 <= request.count <= limits.max_count:
        raise GenerationError(f"count must be between 1 and {limits.max_count}, not {request.count}")
    if not 1 <= request.clip_skip <= limits.max_clip_skip:
        raise GenerationError(f"clip skip must be between 1 and {limits.max_clip_skip}, not {request.clip_skip}")
    if request.seed < -1 or request.seed >= 2**32:
        raise GenerationError(f"seed must be -1 (random) or between 0 and {2**32 - 1}, not {request.seed}")
    if request.hires_scale:
        _check_hires(request, width, height, limits, hires_model)
        # In A1111's spelling: a built-in's, or the model's as A1111 lists it.
        name = hires_model.name if hires_model else parse_upscaler(request.hires_upscaler)
        request = replace(request, hires_upscaler=name)
    elif hires_model is not None:
        raise GenerationError("an upscaler model was given without the hires fix")
    if request.init_image is not None:
        if init_png is None:
            raise GenerationError("the input picture is missing")
        if not 0 < request.strength <= 1:
            raise GenerationError(f"denoising strength must be above 0 and at most 1, not {request.strength:g}")
        if denoising_steps(request.steps, request.strength) < 1:
            raise GenerationError(
                f"at strength {request.strength:g}, {request.steps} steps redraw nothing; raise the steps or strength"
            )
        if request.resize_mode not in RESIZE_MODES:
            raise GenerationError(f"resize mode {request.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if request.mask_image is not None:
        if request.init_image is None:
            raise GenerationError("a mask says which part of a picture to redraw; give the picture too")
        if mask_png is None:
            raise GenerationError("the mask is missing")
        if not 0 <= request.mask_blur <= 64:
            raise GenerationError(f"mask blur must be between 0 and 64 pixels, not {request.mask_blur}")
        if request.masked_content not in MASKED_CONTENT:
            raise GenerationError(f"masked content {request.masked_content!r} is not one of {', '.join(MASKED_CONTENT)}")
        if not 0 <= request.mask_padding <= MAX_MASK_PADDING:
            raise GenerationError(f"masked area padding must be 0 to {MAX_MASK_PADDING} pixels, not {request.mask_padding}")
    elif request.masked_content != "original" or request.only_masked:
        raise GenerationError("masked content and inpaint area are for inpainting; give a mask too")
    try:
        sampler, schedule = parse_sampler(request.sampler, request.schedule)
    except ValueError as e:
        raise GenerationError(str(e)) from None
    if config_parts(checkpoint.pipeline_config)[1] == "edm" and sampler not in EDM_SAMPLERS:
        raise GenerationError(
            f"{checkpoint.name} is an EDM model (Playground v2.5); {sampler} has no EDM form here. "
            f"Choose one of {', '.join(EDM_SAMPLERS)}"
        )
    if checkpoint.family in FLOW_FAMILIES and sampler not in FLOW_SAMPLERS:
        raise GenerationError(
            f"{checkpoint.name} is a flow-matching model ({checkpoint.architecture}); {sampler} has no flow form here. "
            f"Choose one of {', '.join(FLOW_SAMPLERS)}"
        )
    if checkpoint.zero_snr and sampler not in ZERO_SNR_SAMPLERS:
        raise GenerationError(
            f"{checkpoint.name} is a zero-terminal-SNR model; {sampler} cannot follow its schedule. "
            f"Choose one of {', '.join(ZERO_SNR_SAMPLERS)}"
        )
    _check_cfg_rescale(request, checkpoint)
    if checkpoint.family in FLOW_FAMILIES:
        request = _check_flow(request, checkpoint, width, height, embeddings)
    first = random_seed() if request.seed == -1 else request.seed
    seeds = tuple((first + i) % 2**32 for i in range(request.count))  # A1111: one seed per image, counting up
    return ValidRequest(
        request,
        checkpoint,
        width,
        height,
        sampler,
        schedule,
        seeds,
        notes,
        loras,
        embeddings,
        init_png,
        mask_png,
        hires_model,
        vae,
    )


def _check_hires(
    request: GenerationRequest, width: int, height: int, limits: Limits, model: UpscalerUse | None
) -> None:
    if request.init_image is not None:
        raise GenerationError("the hires fix is for pictures made from text; starting from a picture, set the size")
    if not 1 < request.hires_scale <= 4:
        raise GenerationError(f"hires upscale must be above 1 and at most 4, not {request.hires_scale:g}")
    big_w, big_h = hires_size(width, height, request.hires_scale)
    if max(big_w, big_h) > limits.max_size or big_w * big_h > limits.max_pixels:
        raise GenerationError(f"the hires fix would make {big_w}x{big_h}; that is over this bot's size limit")
    if not 0 <= request.hires_steps <= limits.max_steps:
        raise GenerationError(f"hires steps must be between 0 and {limits.max_steps}, not {request.hires_steps}")
    if not 0 < request.hires_denoise <= 1:
        raise GenerationError(f"hires denoising strength {request.hires_denoise:g} redraws nothing; use 0.1 to 1")
    steps = request.hires_steps or request.steps
    if denoising_steps(steps, request.hires_denoise) < 1:
        raise GenerationError(
            f"the hires fix's second pass would run no step ({steps} step(s) × denoising strength "
            f"{request.hires_denoise:g} rounds to 0); raise the hires steps or the strength"
        )
    if model is not None:
        return
    try:
        parse_upscaler(request.hires_upscaler)
    except ValueError as e:
        raise GenerationError(str(e)) from None


def _check_flow(
    request: GenerationRequest,
    checkpoint: CheckpointRef,
    width: int,
    height: int,
    embeddings: tuple[EmbeddingUse, ...],
) -> GenerationRequest:
    """What a Flux or SD3 job may ask here, and its distilled guidance made final (only Flux dev has
    one; the others 0)."""
    latent_hires = bool(request.hires_scale) and request.hires_upscaler in LATENT_UPSCALERS
    unsupported = (
        ("inpainting", request.mask_image is not None),
        ("a latent upscaler for the hires fix (choose Lanczos or an upscaler model)", latent_hires),
        ("textual-inversion embeddings", bool(embeddings)),
        ("CFG rescale", bool(request.cfg_rescale)),
        ("clip skip", request.clip_skip > 1),
    )
    editing = any(len(prompt_schedule(text, max(1, request.steps))) > 1 for text in (request.prompt, request.negative))
    unsupported += (("prompt editing and alternation ([a:b:0.5], [a|b])", editing),)
    refused = [what for what, asked in unsupported if asked]
    family, article = ("Flux", "a") if checkpoint.family == "flux" else ("SD3", "an")
    if refused:
        raise GenerationError(
            f"{checkpoint.name} is {article} {family} checkpoint; {', '.join(refused)} is not supported on {family} yet"
        )
    sizes = [(width, height)] + ([hires_size(width, height, request.hires_scale)] if request.hires_scale else [])
    for w, h in sizes:
        if w % 16 or h % 16:  # 8x the VAE, then 2x2 patches
            raise GenerationError(f"{family} needs sizes in multiples of 16, not {w}x{h}")
    if not 0 <= request.distilled_cfg <= MAX_CFG:
        raise GenerationError(f"distilled CFG scale must be between 0 and {MAX_CFG:g}, not {request.distilled_cfg:g}")
    guided = checkpoint.family == "flux" and checkpoint.variant == "dev"
    return request if guided else replace(request, distilled_cfg=0.0)


def _check_cfg_rescale(request: GenerationRequest, checkpoint: CheckpointRef) -> None:
    if not 0 <= request.cfg_rescale <= 1:
        raise GenerationError(f"CFG rescale must be between 0 and 1, not {request.cfg_rescale:g}")
    # diffusers' SD1/SD2 image-to-image and inpainting pipelines have no guidance rescale (SDXL's do).
    if request.cfg_rescale and checkpoint.family != "sdxl":
        inpainting_model = config_parts(checkpoint.pipeline_config)[1] == "inpainting"
        from_picture = request.init_image is not None or request.hires_scale or inpainting_model
        if from_picture:
            raise GenerationError(
                "CFG rescale works on SD1/SD2 checkpoints only for pictures made from text, without the hires fix"
            )


def _unused_tags(request: GenerationRequest) -> tuple[str, ...]:
    """Extra-network tags that are read but not applied: hypernetworks, and any tag in the negative
    prompt (A1111 takes LoRAs from the prompt only)."""
    unused: dict[str, str] = {}
    for where, text in (("prompt", request.prompt), ("negative prompt", request.negative)):
        for _, scheduled in prompt_schedule(text, max(1, request.steps)):  # prompt editing, alternation
            for tag in parse_prompt(scheduled).extra_networks:
                if where == "negative prompt" or tag.kind.lower() not in ("lora", "lyco"):
                    unused.setdefault(tag.text, where)
    notes = []
    negative = [text for text, where in unused.items() if where == "negative prompt"]
    other = [text for text, where in unused.items() if where == "prompt"]
    if negative:
        notes.append(f"tags in the negative prompt are not applied (LoRAs go in the prompt): {', '.join(negative)}")
    if other:
        notes.append(f"not applied (only LoRA tags are supported): {', '.join(other)}")
    return tuple(notes)


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768)."""
    try:
        width, height = (int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise GenerationError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 512x768") from None
    return width, height
