"""Everything that shapes a picture, as one record from the front end to the pipeline.

The Discord options and the CLI's flags fill it (by field name), the job rules check it
(bot/rules/limits.py), the job store keeps it as one JSON column, the protocol carries it to the
worker, and the worker's family reads it. A new option is a field here, the front ends that offer
it, and the family that uses it: no migration, no copying field by field.

Who asked and where is not here (bot/rules/limits.py `GenerationRequest`), nor the files a job
resolved to (the protocol's LoraUse, VaeUse, … on `RunBatch`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from common.control import ControlUnit
from common.errors import EaselError
from common.samplers import DEFAULT_SAMPLER

DEFAULT_DISTILLED_CFG = 3.5  # Forge's and ComfyUI's FluxGuidance default for Flux dev
RNG_SOURCES = ("GPU", "CPU", "NV")  # A1111's "Random number generator source" (gpu_worker/noise.py)


def _written_as(key: str, *also_read: str) -> dict[str, tuple[str, ...]]:
    """A parameter a picture's A1111 infotext carries under `key` when it is not the default, and that
    "Make this here" reads back from it (or from an older key in `also_read`)."""
    return {"infotext": (key, *also_read)}


@dataclass(frozen=True)
class Parameters:
    prompt: str = ""
    negative: str = ""
    width: int | None = None  # None: the checkpoint's native size (final once validated)
    height: int | None = None
    steps: int = 20
    cfg: float = 7.0
    sampler: str = DEFAULT_SAMPLER  # A1111's name (canonical once validated)
    schedule: str | None = None  # None: the sampler's default, A1111's "Automatic"
    seed: int = -1  # -1: random; once validated, the first picture's seed (the others count up)
    count: int = 1
    clip_skip: int = field(default=1, metadata=_written_as("Clip skip"))  # A1111's: 1 = the last layer
    # img2img and inpainting: the kept input picture and mask, by sha256 (bot/images/inputs.py)
    init_image: str | None = None
    strength: float = 0.75  # A1111's "Denoising strength": how much of the input is redrawn
    resize_mode: str = "crop"  # resize | crop | fill: how the input meets the job's size
    mask_image: str | None = None  # white = redraw, with init_image
    mask_blur: int = 4  # A1111's "Mask blur" radius, in pixels
    masked_content: str = "original"  # A1111's "Masked content" (common/protocol.py MASKED_CONTENT)
    only_masked: bool = False  # A1111's "Inpaint area": False = Whole picture, True = Only masked
    mask_padding: int = 32  # A1111's "Masked area padding", with only_masked
    # A1111's hires fix: 0 = off, else pass two's size factor; its steps (0: as pass one's), its
    # denoising strength, and what enlarges pass one's result (common/hires_upscalers.py, or a model)
    hires_scale: float = 0.0
    hires_steps: int = 0
    hires_denoise: float = 0.7
    hires_upscaler: str = "Latent"
    # Lin et al. 2023, eq. 16: 0 = off. The A1111 extension's key (Seshelle/CFG_Rescale_webui), and
    # the plain one it also reads.
    cfg_rescale: float = field(default=0.0, metadata=_written_as("CFG Rescale φ", "CFG Rescale"))
    vae: str | None = None  # a registered VAE's name or hash; "none": the checkpoint's own; None: its default
    distilled_cfg: float = DEFAULT_DISTILLED_CFG  # Forge's "Distilled CFG Scale": Flux dev's guidance input
    # The starting noise, as A1111 draws it (gpu_worker/noise.py): its "Random number generator
    # source" (GPU, CPU or NV; GPU, A1111's default, is not written), and its "Extra" seed options: a
    # variation seed mixed in at a strength (the seed is written only with a strength; once validated,
    # the first picture's, the others counting up) and the size ("WxH") the seed's noise is drawn at.
    rng: str = field(default="GPU", metadata=_written_as("RNG"))
    subseed: int = field(default=-1, metadata=_written_as("Variation seed"))
    subseed_strength: float = field(default=0.0, metadata=_written_as("Variation seed strength"))
    seed_resize_from: str = field(default="", metadata=_written_as("Seed resize from"))
    # A1111's "Eta noise seed delta": a sampler that draws noise at each step draws it from
    # generators seeded with seed + this after the first draw (NovelAI's 31337). Kept only for such a
    # sampler, and written then, as A1111 writes it.
    ensd: int = field(default=0, metadata=_written_as("ENSD"))
    # The prompts' {a|b} variants and __wildcards__ are expanded per picture (bot/wildcards.py); False
    # for a pasted infotext's prompt, which is the expansion already (braces in it are A1111's text).
    dynamic: bool = True
    # hako-mikan's Regional Prompter (common/regions.py): its divide ratio and options, e.g.
    # "1,2;1,1 rows base 0.3"; "" off (once validated, also when the prompt places ADDCOL/ADDROW).
    regions: str = ""
    # Editing by instruction (common/editing.py): the input pictures an edit model reads beside the
    # prompt (then its instruction), kept by sha256 (bot/images/inputs.py), in order.
    edit_images: tuple[str, ...] = ()
    # ControlNet units (common/control.py): a picture each, kept by sha256, its preprocessor, model,
    # weight, steps and control mode; the model's name is final once validated.
    control: tuple[ControlUnit, ...] = ()
    # The detail pass (common/detail.py, ADetailer's): "" off, or "faces"; how much of each face is
    # redrawn (its denoising strength)
    detail: str = ""
    detail_strength: float = 0.4

    @classmethod
    def names(cls) -> frozenset[str]:
        return _names()

    @classmethod
    def of(cls, values: Mapping[str, Any], base: Parameters | None = None) -> Parameters:
        """`base` (the defaults) with `values` in place: each a field of the record, of its type;
        EaselError naming the first that is not."""
        unknown = sorted(set(values) - _names())
        if unknown:
            raise EaselError(f"{unknown[0]} is not a generation parameter")
        merged = {**_as_dict(base or cls()), **values}
        try:
            return _adapter().validate_python(merged, strict=False)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise EaselError(f"{where}: {first['msg'].lower()}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Parameters:
        """A stored record: keys this version does not know are left out (a newer writer), keys it
        lacks take their defaults (an older one)."""
        stored = json.loads(text)
        return cls.of({key: value for key, value in stored.items() if key in _names()})


@dataclass(frozen=True)
class InfotextKey:
    name: str  # the parameter
    keys: tuple[str, ...]  # written under the first, read from any
    kind: type  # int, float, str or bool: the default's type
    default: Any


@cache
def infotext_keys() -> tuple[InfotextKey, ...]:
    """The parameters an infotext carries by their field's own key (the rest are written and read
    where their rules are: sizes, seeds, the hires fix, inpainting)."""
    return tuple(
        InfotextKey(f.name, f.metadata["infotext"], type(f.default), f.default)
        for f in fields(Parameters)
        if "infotext" in f.metadata
    )


def written(parameters: Parameters) -> dict[str, str]:
    """Those parameters as infotext pairs, each only when it is not its default (as A1111 writes)."""
    pairs = {}
    for key in infotext_keys():
        value = getattr(parameters, key.name)
        if value != key.default:
            pairs[key.keys[0]] = f"{value:g}" if isinstance(value, float) else str(value)
    return pairs


def _as_dict(parameters: Parameters) -> dict[str, Any]:
    return {f.name: getattr(parameters, f.name) for f in fields(parameters)}


@cache
def _names() -> frozenset[str]:
    return frozenset(f.name for f in fields(Parameters))


@cache
def _adapter() -> TypeAdapter[Parameters]:
    return TypeAdapter(Parameters)
