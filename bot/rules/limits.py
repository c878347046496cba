"""A generation request as a front end sends it, its limits, and its validation.

Validation happens before anything is queued or sent to a GPU: every problem is one clear line.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from dataclasses import dataclass, replace

from bot.generation.checkpoint_ref import CheckpointRef
from bot.untrusted import has_lone_surrogate
from common.control import FLUX_UNION_MODES, IP_ADAPTER_MODULES, PREPROCESSORS, check_unit
from common.control import MAX_UNITS as MAX_CONTROL_UNITS
from common.detail import HAND_DETECTOR
from common.detail import check_target as check_detail_target
from common.detector_file import DETECTOR_FOLDERS
from common.editing import edit_model
from common.errors import EaselError
from common.families import FAMILIES, FLOW_FAMILIES
from common.hires_upscalers import LATENT_UPSCALERS, parse_upscaler
from common.parameters import RNG_SOURCES, Parameters
from common.prompt_schedule import prompt_schedule
from common.prompt_syntax import parse_prompt
from common.protocol import (
    MASKED_CONTENT,
    ControlNetUse,
    DetectorUse,
    EmbeddingUse,
    LoraUse,
    UpscalerUse,
    VaeUse,
    config_parts,
    denoising_steps,
    hires_size,
)
from common.regions import RegionSettings
from common.regions import active as regions_active
from common.regions import check as check_region_prompt
from common.samplers import (
    DIFFUSERS_SCHEDULES,
    EDM_SAMPLERS,
    FLOW_DEFAULT_SAMPLER,
    FLOW_SAMPLERS,
    SAMPLERS,
    ZERO_SNR_SAMPLERS,
    a1111_sampling,
    parse_sampler,
)

CONTROL_FAMILIES = ("sd1", "sd2", "sdxl", "flux")  # on a UNet, or Flux.1's transformer (gpu_worker/controlnets.py)


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
    """Who asks, where, and for what (the parameters as given; validate() makes them final)."""

    parameters: Parameters
    requester_id: str
    requester_name: str = ""
    guild_id: str | None = None
    channel_id: str | None = None

    @classmethod
    def of(cls, requester_id: str, guild_id: str | None = None, **parameters: object) -> GenerationRequest:
        """A request from keyword values (benches and tests): the parameters by their names."""
        return cls(Parameters.of(parameters), requester_id, guild_id=guild_id)


MAX_MASK_PADDING = 256  # A1111's slider goes to 256
# (steps, CFG) a flow model runs with when the job names none, by family and variant: FLUX.1 with
# CFG 1 (its guidance is distilled; schnell in 4 steps, BFL's model card), SD3.x as SAI's model cards
# run them (SD3.5 Large 28 steps at 3.5, SD3.5 Medium 40 at 4.5, SD3 Medium 28 at 7). None: the place's.
FLOW_DEFAULTS: dict[tuple[str, str], tuple[int | None, float]] = {
    ("flux", "dev"): (None, 1.0),
    ("flux", "schnell"): (4, 1.0),
    ("flux", "kontext"): (28, 1.0),  # BFL's model card (common/editing.py)
    ("sd3", "large"): (28, 3.5),
    ("sd3", "medium"): (40, 4.5),
    ("sd3", "sd3-medium"): (28, 7.0),
    # Z-Image Turbo: 8 steps with no CFG (its model card's 9 steps are 8 model calls; ComfyUI's
    # template: 8 steps, CFG 1); Base: 28 steps at CFG 4 (its card: 28-50 steps, CFG 3-5).
    ("z-image", "turbo"): (8, 1.0),
    ("z-image", "base"): (28, 4.0),
    ("chroma", ""): (35, 5.0),
    ("qwen-image", ""): (50, 4.0),  # Qwen-Image's model card: 50 steps, true CFG 4 with the negative prompt
    ("qwen-image", "edit"): (50, 4.0),  # Qwen-Image-Edit's (common/editing.py)
    # FLUX.2 [klein]: the distilled release in 4 steps without CFG, Base 50 steps at CFG 4 (BFL's
    # cards; diffusers' Flux2KleinPipeline examples)
    ("flux2", "klein"): (4, 1.0),
    ("flux2", "base"): (50, 4.0),
    ("qwen-image", "edit-plus"): (40, 4.0),  # Qwen-Image-Edit 2509's and 2511's  # diffusers' ChromaPipeline (Chroma1-HD): real CFG with the negative prompt
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
    """A request after validation: every value final (size, the sampler and schedule by their A1111
    names, the hires upscaler as A1111 spells it, the first seed drawn), the files it uses resolved."""

    request: GenerationRequest  # as asked
    checkpoint: CheckpointRef
    parameters: Parameters  # final
    seeds: tuple[int, ...]
    notes: tuple[str, ...] = ()  # what the requester should know, e.g. tags that were not applied
    loras: tuple[LoraUse, ...] = ()  # resolved from the prompt's <lora:…> tags by bot/rules/network_selection.py
    embeddings: tuple[EmbeddingUse, ...] = ()  # registered embeddings whose names the texts use
    init_png: bytes | None = None  # img2img: the input picture itself (plain RGB PNG)
    mask_png: bytes | None = None  # inpainting: the mask itself
    hires_model: UpscalerUse | None = None  # the hires fix's upscaler, when it is a model file
    vae: VaeUse | None = None  # the VAE in place of the checkpoint's own (bot/components/registry.py)
    # With wildcards: each picture's own prompt and negative, expanded from `parameters` (the templates)
    prompts: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    edit_pngs: tuple[bytes, ...] = ()  # an edit's input pictures themselves (plain RGB PNGs), in order
    # ControlNet (common/control.py): each unit's model and picture (plain RGB PNG), in the units' order
    controlnets: tuple[ControlNetUse, ...] = ()
    control_pngs: tuple[bytes, ...] = ()
    # The detail pass's passes, each with its detector (bot/detectors.py), faces before hands
    detectors: tuple[DetectorUse, ...] = ()

    @property
    def width(self) -> int:
        return self.parameters.width or 0

    @property
    def subseeds(self) -> tuple[int, ...]:
        """One variation seed per picture, counting up as the seeds do (none without a strength)."""
        p = self.parameters
        return tuple((p.subseed + i) % 2**32 for i in range(p.count)) if p.subseed_strength else ()

    @property
    def height(self) -> int:
        return self.parameters.height or 0

    @property
    def denoising_steps(self) -> int:
        """Steps actually run: img2img runs `steps × strength` of them, as A1111 does by default."""
        p = self.parameters
        return p.steps if p.init_image is None else denoising_steps(p.steps, p.strength)


# Characters that draw nothing although Unicode files some of them as letters or symbols.
_BLANK_LETTERS = frozenset("\u115f\u1160\u2800\u3164\uffa0")
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})


def has_visible_text(text: str) -> bool:
    """Whether `text` has a character that shows: zero-width spaces and joiners alone do not count."""
    return any(ch not in _BLANK_LETTERS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in text)


def random_seed() -> int:
    return random.randrange(4294967294)  # A1111's range


def check_texts(p: Parameters, limits: Limits) -> None:
    """The prompt and negative prompt as text: not empty, valid, within the length limit."""
    if not has_visible_text(p.prompt):
        raise GenerationError("the prompt is empty; describe the picture you want")
    for label, text in (("prompt", p.prompt), ("negative prompt", p.negative)):
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
    edit_pngs: tuple[bytes, ...] = (),
    controlnets: tuple[ControlNetUse, ...] = (),
    control_pngs: tuple[bytes, ...] = (),
    detectors: tuple[DetectorUse, ...] = (),
) -> ValidRequest:
    """Every value checked and made final; LoRAs and embeddings were resolved beforehand
    (bot/rules/network_selection.py), with `notes` on what of them was not applied."""
    p = request.parameters
    check_texts(p, limits)
    notes = _unused_tags(p) + notes
    if not checkpoint.runnable:
        raise GenerationError(f"{checkpoint.name} ({checkpoint.architecture}) cannot be run: {checkpoint.reason}")
    if not checkpoint.present:
        raise GenerationError(f"{checkpoint.name} is missing from the models directory; an admin needs to rescan")
    width = p.width or checkpoint.native_size
    height = p.height or checkpoint.native_size
    _check_numbers(p, width, height, limits)
    if p.hires_scale:
        _check_hires(p, width, height, limits, hires_model)
        # In A1111's spelling: a built-in's, or the model's as A1111 lists it.
        p = replace(p, hires_upscaler=hires_model.name if hires_model else parse_upscaler(p.hires_upscaler))
    elif hires_model is not None:
        raise GenerationError("an upscaler model was given without the hires fix")
    _check_inputs(p, init_png, mask_png)
    _check_edit(p, checkpoint, edit_pngs)
    p = _check_control(p, checkpoint, controlnets, control_pngs)
    p, detectors = _check_detail(p, detectors)
    p = _check_noise(p, limits)
    sampler, schedule = _sampler_for(p, checkpoint)
    if not 0 <= p.ensd < 2**32:
        raise GenerationError(f"ENSD (eta noise seed delta) must be between 0 and {2**32 - 1}, not {p.ensd}")
    if not SAMPLERS[sampler].noisy or checkpoint.family in FLOW_FAMILIES:
        p = replace(p, ensd=0)  # no step noise to reseed: A1111 writes none
    _check_cfg_rescale(p, checkpoint)
    if checkpoint.family in FLOW_FAMILIES:
        p = _check_flow(p, checkpoint, width, height, embeddings)
    p = check_regions(p, p.prompt, p.negative, checkpoint)
    first = random_seed() if p.seed == -1 else p.seed
    seeds = tuple((first + i) % 2**32 for i in range(p.count))  # A1111: one seed per image, counting up
    final = replace(
        p, prompt=p.prompt.strip(), width=width, height=height, sampler=sampler, schedule=schedule, seed=first
    )
    return ValidRequest(
        request,
        checkpoint,
        final,
        seeds,
        notes,
        loras,
        embeddings,
        init_png,
        mask_png,
        hires_model,
        vae,
        edit_pngs=edit_pngs,
        controlnets=controlnets,
        control_pngs=control_pngs,
        detectors=detectors,
    )


def _check_control(
    p: Parameters, checkpoint: CheckpointRef, controlnets: tuple[ControlNetUse, ...], control_pngs: tuple[bytes, ...]
) -> Parameters:
    """ControlNet units: at most MAX_UNITS, each in range, each with its model (resolved by
    bot/controlnets/registry.py for this checkpoint's base) and its picture."""
    if not p.control:
        if controlnets or control_pngs:
            raise GenerationError("ControlNet models or pictures were given without a unit")
        return p
    if len(p.control) > MAX_CONTROL_UNITS:
        raise GenerationError(f"a job takes at most {MAX_CONTROL_UNITS} ControlNet units, not {len(p.control)}")
    if checkpoint.family not in CONTROL_FAMILIES:
        raise GenerationError(f"ControlNet runs on SD1, SD2, SDXL and FLUX.1 checkpoints, not {checkpoint.architecture}")
    if checkpoint.family == "flux" and any(u.mode != "Balanced" for u in p.control):
        raise GenerationError("a Flux ControlNet's control mode is Balanced: its weight says how strongly it steers")
    if p.edit_images:
        raise GenerationError("an edit takes no ControlNet units; make the picture with /control, then edit it")
    if len(controlnets) != len(p.control) or len(control_pngs) != len(p.control):
        raise GenerationError("each ControlNet unit needs its model and its picture")
    units = tuple(check_unit(unit) for unit in p.control)
    for unit, use in zip(units, controlnets, strict=True):
        if use.base != checkpoint.family:
            raise GenerationError(f"the ControlNet {use.name} is for {use.base.upper()} checkpoints, not {checkpoint.architecture}")
        adapter, reads_picture = use.layout.startswith("ip-adapter"), unit.module in IP_ADAPTER_MODULES
        if adapter != reads_picture:
            raise GenerationError(
                f"the {'IP-Adapter' if adapter else 'ControlNet'} {use.name} takes "
                + ("an ip-adapter_clip_h or ip-adapter_clip_g preprocessor" if adapter else f"a map, not the {unit.module} preprocessor")
            )
        if adapter and use.encoder is None:
            raise GenerationError(f"the IP-Adapter {use.name} needs its CLIP vision encoder from models/clip_vision")
        pre = PREPROCESSORS[unit.module]
        if [layout for layout, _ in pre.annotators] != [a.role for a in use.annotators]:
            raise GenerationError(f"the {unit.module} preprocessor needs its annotators ({pre.needs}) in models/ControlNetPreprocessor")
        union = FLUX_UNION_MODES.get(unit.module) if use.base == "flux" else pre.union
        if use.union_types and (union is None or union >= use.union_types):
            raise GenerationError(f"the ControlNet-Union model {use.name} has no control type for the {unit.module} preprocessor's map")
    return replace(p, control=tuple(replace(unit, model=use.name) for unit, use in zip(units, controlnets, strict=True)))


def _check_detail(p: Parameters, detectors: tuple[DetectorUse, ...]) -> tuple[Parameters, tuple[DetectorUse, ...]]:
    """The detail pass (common/detail.py): faces, hands or both, each pass with what finds its targets
    (bot/detectors.py chose them: hands only with a hand detector file), at a denoising strength above
    0 up to 1; not on an edit."""
    target = check_detail_target(p.detail)
    wanted = {"": (), "both": ("faces", "hands")}.get(target, (target,))
    if not detectors:  # no detector registry here: faces by the picture check's detector; hands by none
        detectors = tuple(DetectorUse(t) for t in wanted)
    if tuple(d.target for d in detectors) != wanted:
        raise GenerationError(f"the detail pass for {target or 'nothing'} was given detectors for other things")
    if any(d.target == "hands" and d.detector is None for d in detectors):
        raise GenerationError(
            f"the detail pass finds hands with a hand detector: ADetailer's {HAND_DETECTOR} (Bingsu/adetailer on "
            f"Hugging Face) in models/{DETECTOR_FOLDERS[0]}; none is installed"
        )
    if target and not 0.0 < p.detail_strength <= 1.0:
        raise GenerationError(f"the detail pass's denoising strength is above 0 up to 1, not {p.detail_strength:g}")
    if target and p.edit_images:
        raise GenerationError("an edit has no detail pass; fix the faces of its result with the Fix faces button")
    return replace(p, detail=target), detectors


def check_edit_model(checkpoint: CheckpointRef, pictures: int) -> None:
    """That `checkpoint` can edit `pictures` input pictures at once."""
    model = edit_model(checkpoint.family, checkpoint.variant)
    if model is None:
        raise GenerationError(
            f"{checkpoint.name} ({checkpoint.architecture}) cannot edit pictures; choose an edit model such as FLUX.1 Kontext"
        )
    if pictures > model.max_pictures:
        most = f"{model.max_pictures} input picture{'s' if model.max_pictures > 1 else ''}"
        raise GenerationError(f"{model.label} edits with at most {most}, not {pictures}")


def _check_edit(p: Parameters, checkpoint: CheckpointRef, edit_pngs: tuple[bytes, ...]) -> None:
    """An edit: a model that can, its pictures all present, and nothing that starts from a picture
    another way (img2img, inpainting) beside it."""
    if not p.edit_images:
        if edit_pngs:
            raise GenerationError("input pictures were given for an edit, but the job is not one")
        return
    check_edit_model(checkpoint, len(p.edit_images))
    if len(edit_pngs) != len(p.edit_images):
        raise GenerationError("an input picture of this edit is missing")
    if p.init_image is not None or p.mask_image is not None:
        raise GenerationError("an edit reads its pictures as they are; img2img and inpainting do not apply to it")


def _check_numbers(p: Parameters, width: int, height: int, limits: Limits) -> None:
    """The size, steps, CFG, count, clip skip and seed, within this bot's limits."""
    for label, value in (("width", width), ("height", height)):
        if value % 8:
            raise GenerationError(f"{label} {value} is not a multiple of 8")
        if not limits.min_size <= value <= limits.max_size:
            raise GenerationError(f"{label} {value} is outside {limits.min_size}-{limits.max_size}")
    if width * height > limits.max_pixels:
        raise GenerationError(f"{width}x{height} is over the {limits.max_pixels / 1e6:.1f}-megapixel limit")
    if not 1 <= p.steps <= limits.max_steps:
        raise GenerationError(f"steps must be between 1 and {limits.max_steps}, not {p.steps}")
    if not 0 <= p.cfg <= limits.max_cfg:
        raise GenerationError(f"CFG scale must be between 0 and {limits.max_cfg:g}, not {p.cfg:g}")
    if not 1 <= p.count <= limits.max_count:
        raise GenerationError(f"count must be between 1 and {limits.max_count}, not {p.count}")
    if not 1 <= p.clip_skip <= limits.max_clip_skip:
        raise GenerationError(f"clip skip must be between 1 and {limits.max_clip_skip}, not {p.clip_skip}")
    if p.seed < -1 or p.seed >= 2**32:
        raise GenerationError(f"seed must be -1 (random) or between 0 and {2**32 - 1}, not {p.seed}")


def parse_variation(text: str) -> tuple[int, float]:
    """/imagine's `variation`: "STRENGTH" (a random variation seed) or "SEED:STRENGTH", as A1111's
    Variation seed and Variation seed strength -> (subseed, strength); -1: drawn at random."""
    seed_text, _, strength_text = text.strip().rpartition(":")
    try:
        strength = float(strength_text)
        seed = int(seed_text) if seed_text.strip() else -1
    except ValueError:
        raise GenerationError(f"variation {text[:40]!r} is not STRENGTH or SEED:STRENGTH (e.g. 0.2 or 1234:0.2)") from None
    if not math.isfinite(strength):
        raise GenerationError(f"variation {text[:40]!r} is not STRENGTH or SEED:STRENGTH (e.g. 0.2 or 1234:0.2)")
    return seed, strength


def _check_noise(p: Parameters, limits: Limits) -> Parameters:
    """The noise's source and A1111's variation seed and seed resize, checked; the variation seed
    drawn when a strength asks for one, and cleared when none does (A1111 writes it only then)."""
    rng = p.rng.strip().upper()
    if rng not in RNG_SOURCES:
        raise GenerationError(f"RNG {p.rng[:20]!r} is not one of {', '.join(RNG_SOURCES)}")
    if not 0 <= p.subseed_strength <= 1:
        raise GenerationError(f"variation seed strength must be between 0 and 1, not {p.subseed_strength:g}")
    if p.subseed < -1 or p.subseed >= 2**32:
        raise GenerationError(f"variation seed must be -1 (random) or between 0 and {2**32 - 1}, not {p.subseed}")
    subseed = -1 if not p.subseed_strength else random_seed() if p.subseed == -1 else p.subseed
    resize = p.seed_resize_from.strip().lower()
    if resize:
        found = re.fullmatch(r"(\d{1,5})x(\d{1,5})", resize)
        if found is None:
            raise GenerationError(f"seed resize from {p.seed_resize_from[:20]!r} is not WIDTHxHEIGHT")
        width, height = int(found[1]), int(found[2])
        if not (limits.min_size <= width <= limits.max_size and limits.min_size <= height <= limits.max_size):
            raise GenerationError(f"seed resize from {resize} is outside {limits.min_size}-{limits.max_size}")
        if width % 8 or height % 8:
            raise GenerationError(f"seed resize from {resize} is not in multiples of 8")
    return replace(p, rng=rng, subseed=subseed, seed_resize_from=resize)


def _check_inputs(p: Parameters, init_png: bytes | None, mask_png: bytes | None) -> None:
    """A picture to start from and a mask: present, with options that fit them (and none without)."""
    if p.init_image is not None:
        if init_png is None:
            raise GenerationError("the input picture is missing")
        if not 0 < p.strength <= 1:
            raise GenerationError(f"denoising strength must be above 0 and at most 1, not {p.strength:g}")
        if denoising_steps(p.steps, p.strength) < 1:
            raise GenerationError(
                f"at strength {p.strength:g}, {p.steps} steps redraw nothing; raise the steps or strength"
            )
        if p.resize_mode not in RESIZE_MODES:
            raise GenerationError(f"resize mode {p.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if p.mask_image is not None:
        if p.init_image is None:
            raise GenerationError("a mask says which part of a picture to redraw; give the picture too")
        if mask_png is None:
            raise GenerationError("the mask is missing")
        if not 0 <= p.mask_blur <= 64:
            raise GenerationError(f"mask blur must be between 0 and 64 pixels, not {p.mask_blur}")
        if p.masked_content not in MASKED_CONTENT:
            raise GenerationError(f"masked content {p.masked_content!r} is not one of {', '.join(MASKED_CONTENT)}")
        if not 0 <= p.mask_padding <= MAX_MASK_PADDING:
            raise GenerationError(f"masked area padding must be 0 to {MAX_MASK_PADDING} pixels, not {p.mask_padding}")
    elif p.masked_content != "original" or p.only_masked:
        raise GenerationError("masked content and inpaint area are for inpainting; give a mask too")


def _sampler_for(p: Parameters, checkpoint: CheckpointRef) -> tuple[str, str]:
    return check_sampler(p.sampler, p.schedule, checkpoint)


def check_sampler(text: str, schedule_text: str | None, checkpoint: CheckpointRef) -> tuple[str, str]:
    """The sampler and schedule by their A1111 names, if the checkpoint's kind of model can follow them."""
    try:
        sampler, schedule = parse_sampler(text, schedule_text)
    except ValueError as e:
        raise GenerationError(str(e)) from None
    if config_parts(checkpoint.pipeline_config)[1] == "edm" and sampler not in EDM_SAMPLERS:
        raise GenerationError(
            f"{checkpoint.name} is an EDM model (Playground v2.5); {sampler} has no EDM form here. "
            f"Choose one of {', '.join(EDM_SAMPLERS)}"
        )
    family = FAMILIES.get(checkpoint.family)
    offered = family.samplers if family is not None and family.samplers else FLOW_SAMPLERS
    if checkpoint.family in FLOW_FAMILIES and sampler not in offered:
        raise GenerationError(
            f"{checkpoint.name} is a flow-matching model ({checkpoint.architecture}); {sampler} has no flow form here. "
            f"Choose {'one of ' if len(offered) > 1 else ''}{', '.join(offered)}"
        )
    if checkpoint.zero_snr and sampler not in ZERO_SNR_SAMPLERS:
        raise GenerationError(
            f"{checkpoint.name} is a zero-terminal-SNR model; {sampler} cannot follow its schedule. "
            f"Choose one of {', '.join(ZERO_SNR_SAMPLERS)}"
        )
    variant = config_parts(checkpoint.pipeline_config)[1]
    if schedule not in DIFFUSERS_SCHEDULES and not a1111_sampling(sampler, checkpoint.family, variant, checkpoint.zero_snr):
        raise GenerationError(
            f"the {schedule} schedule is for A1111's samplers on SD1, SD2 and SDXL models; "
            f"with {sampler} on {checkpoint.name} choose one of {', '.join(DIFFUSERS_SCHEDULES)}"
        )
    return sampler, schedule


def _check_hires(
    p: Parameters, width: int, height: int, limits: Limits, model: UpscalerUse | None
) -> None:
    if p.init_image is not None:
        raise GenerationError("the hires fix is for pictures made from text; starting from a picture, set the size")
    if not 1 < p.hires_scale <= 4:
        raise GenerationError(f"hires upscale must be above 1 and at most 4, not {p.hires_scale:g}")
    big_w, big_h = hires_size(width, height, p.hires_scale)
    if max(big_w, big_h) > limits.max_size or big_w * big_h > limits.max_pixels:
        raise GenerationError(f"the hires fix would make {big_w}x{big_h}; that is over this bot's size limit")
    if not 0 <= p.hires_steps <= limits.max_steps:
        raise GenerationError(f"hires steps must be between 0 and {limits.max_steps}, not {p.hires_steps}")
    if not 0 < p.hires_denoise <= 1:
        raise GenerationError(f"hires denoising strength {p.hires_denoise:g} redraws nothing; use 0.1 to 1")
    steps = p.hires_steps or p.steps
    if denoising_steps(steps, p.hires_denoise) < 1:
        raise GenerationError(
            f"the hires fix's second pass would run no step ({steps} step(s) × denoising strength "
            f"{p.hires_denoise:g} rounds to 0); raise the hires steps or the strength"
        )
    if model is not None:
        return
    try:
        parse_upscaler(p.hires_upscaler)
    except ValueError as e:
        raise GenerationError(str(e)) from None


def _check_flow(
    p: Parameters,
    checkpoint: CheckpointRef,
    width: int,
    height: int,
    embeddings: tuple[EmbeddingUse, ...],
) -> Parameters:
    """What a Flux or SD3 job may ask here, and its distilled guidance made final (only Flux dev has
    one; the others 0)."""
    latent_hires = bool(p.hires_scale) and p.hires_upscaler in LATENT_UPSCALERS
    latent_fill = p.mask_image is not None and p.masked_content in ("latent noise", "latent nothing")
    unsupported = (
        (f"masked content {p.masked_content} (choose original or fill)", latent_fill),
        ("a latent upscaler for the hires fix (choose Lanczos or an upscaler model)", latent_hires),
        ("textual-inversion embeddings", bool(embeddings)),
        ("CFG rescale", bool(p.cfg_rescale)),
        ("clip skip", p.clip_skip > 1),
        (
            "starting from a picture (img2img, Vary) and the hires fix (Upscale)",
            checkpoint.family in FAMILIES
            and not FAMILIES[checkpoint.family].from_picture
            and bool((p.init_image and p.mask_image is None) or p.hires_scale),  # inpainting has a pipeline of its own
        ),
    )
    editing = any(len(prompt_schedule(text, max(1, p.steps))) > 1 for text in (p.prompt, p.negative))
    unsupported += (("prompt editing and alternation ([a:b:0.5], [a|b])", editing),)
    refused = [what for what, asked in unsupported if asked]
    family = FAMILIES[checkpoint.family].short_label if checkpoint.family in FAMILIES else checkpoint.family
    article = "an" if family[0].lower() in "aeios" else "a"
    if refused:
        raise GenerationError(
            f"{checkpoint.name} is {article} {family} checkpoint; {', '.join(refused)} is not supported on {family} yet"
        )
    sizes = [(width, height)] + ([hires_size(width, height, p.hires_scale)] if p.hires_scale else [])
    for w, h in sizes:
        if w % 16 or h % 16:  # 8x the VAE, then 2x2 patches
            raise GenerationError(f"{family} needs sizes in multiples of 16, not {w}x{h}")
    if not 0 <= p.distilled_cfg <= MAX_CFG:
        raise GenerationError(f"distilled CFG scale must be between 0 and {MAX_CFG:g}, not {p.distilled_cfg:g}")
    guided = checkpoint.family == "flux" and checkpoint.variant in ("dev", "kontext")  # the guidance-distilled ones
    return p if guided else replace(p, distilled_cfg=0.0)


def check_regions(p: Parameters, prompt: str, negative: str, checkpoint: CheckpointRef) -> Parameters:
    """Regional prompting (common/regions.py) as `prompt` asks for it: its settings in their canonical
    form ("" when it does not draw regions), the prompt checked to hold the regions they name."""
    if not regions_active(prompt, p.regions):
        return replace(p, regions="")
    if checkpoint.family in FLOW_FAMILIES:
        raise GenerationError(f"{checkpoint.name}: regional prompting works on SD1, SD2 and SDXL checkpoints only")
    settings = RegionSettings.parse(p.regions) if p.regions.strip() else RegionSettings()
    check_region_prompt(prompt, negative, settings, p.steps)
    return replace(p, regions=settings.text())


def _check_cfg_rescale(p: Parameters, checkpoint: CheckpointRef) -> None:
    if not 0 <= p.cfg_rescale <= 1:
        raise GenerationError(f"CFG rescale must be between 0 and 1, not {p.cfg_rescale:g}")
    # diffusers' SD1/SD2 image-to-image and inpainting pipelines have no guidance rescale (SDXL's do).
    if p.cfg_rescale and checkpoint.family != "sdxl":
        inpainting_model = config_parts(checkpoint.pipeline_config)[1] == "inpainting"
        from_picture = p.init_image is not None or p.hires_scale or inpainting_model
        if from_picture:
            raise GenerationError(
                "CFG rescale works on SD1/SD2 checkpoints only for pictures made from text, without the hires fix"
            )


def _unused_tags(p: Parameters) -> tuple[str, ...]:
    """Extra-network tags that are read but not applied: hypernetworks, and any tag in the negative
    prompt (A1111 takes LoRAs from the prompt only)."""
    unused: dict[str, str] = {}
    for where, text in (("prompt", p.prompt), ("negative prompt", p.negative)):
        for _, scheduled in prompt_schedule(text, max(1, p.steps)):  # prompt editing, alternation
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
