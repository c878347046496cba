"""Starting a job: the one place that decides whether and how a job runs.

Every front end — /imagine, the Reroll, Vary and other-checkpoint buttons, the prompt modals,
/checkpoints compare, and the CLI's `generate` and `catalog compare` — asks here. A plan resolves
the checkpoint(s), fills what was left out with the place's defaults (channel, then server, then
the bot), and applies every rule of the place: hidden checkpoints, NSFW policy, blocked words, most
steps and pictures, and whether pictures go behind a spoiler. The plan is either refused with one
EaselError whose message is for the person who asked, or queued by `start`, where the generation
service admits it (queue room, per-user limit, cooldown) under its lock.

Roles are defined once here: a bot owner, and a moderator = Discord's Manage Server permission in
that server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.catalog.compare import MAX_CHECKPOINTS as MAX_COMPARE
from bot.catalog.compare import resolve_all
from bot.checkpoints.registry import CheckpointEntry, CheckpointRegistry
from bot.components.parts import find_parts
from bot.components.registry import VaeRegistry
from bot.components.text_encoders import TextEncoderRegistry
from bot.controlnets.annotators import AnnotatorRegistry, with_annotators
from bot.controlnets.clip_vision import ClipVisionRegistry, with_encoder
from bot.controlnets.registry import ControlNetRegistry
from bot.demo import DEMO_NOTE, is_demo
from bot.detectors import DetectorRegistry
from bot.generation.aspects import rescale, size_for
from bot.generation.checkpoint_ref import CheckpointRef, resolve_checkpoint
from bot.generation.service import GenerationService, JobHandle
from bot.generation.store import JobRecord
from bot.guilds.settings import Effective, GuildSettings
from bot.images.infotext import (
    Infotext,
    parse_infotext,
    read_picture,
    read_picture_parameters,
    render_infotext,
    size_of,
)
from bot.images.inputs import InputStore
from bot.images.picture_check import PictureCheck
from bot.images.uploads import Upload, UploadError, read_upload
from bot.networks.registry import EmbeddingRegistry, LoraRegistry, NetworkEntry, NetworkRegistry
from bot.rules.cooldowns import Cooldowns
from bot.rules.limits import (
    CONTROL_FAMILIES,
    GenerationRequest,
    ValidRequest,
    check_edit_model,
    check_regions,
    check_texts,
    family_defaults,
    random_seed,
    validate,
)
from bot.rules.minors import check_minors
from bot.rules.network_selection import lora_tags, resolve_embeddings, resolve_loras, with_lora_tag
from bot.rules.policy import check_prompt
from bot.styles import StyleBook, StyleError
from bot.styles import apply as apply_styles
from bot.upscalers.service import Upscaled, UpscaleService, upscaled_size
from bot.wildcards import WildcardError, WildcardLibrary, is_template
from common.control import MAX_UNITS as MAX_CONTROL_UNITS
from common.control import ControlUnit, preprocessor, units_from_infotext
from common.detail import HAND_DETECTOR
from common.detail import from_infotext as detail_from_infotext
from common.editing import EDIT_MODELS, INFOTEXT_KEY, edit_model, install_hint, read_hashes
from common.errors import EaselError
from common.families import FAMILIES, FLOW_FAMILIES
from common.hires_upscalers import LATENT_UPSCALERS
from common.parameters import Parameters, infotext_keys
from common.protocol import ControlNetUse, LoraUse, UpscalerUse, VaeUse, denoising_steps
from common.regions import from_infotext as regions_from_infotext

log = logging.getLogger(__name__)

# The Vary buttons: img2img from the picture, a new seed, at these denoising strengths.
VARY_SUBTLE = 0.35
VARY_STRONG = 0.65
UPSCALE = 2.0  # the Upscale button: the same job with A1111's hires fix at this factor
# The Upscale button on a picture made from a picture: redrawn from itself, enlarged, at this strength
# (the hires fix's second pass, applied to the picture as posted).
UPSCALE_REDRAW = 0.35


@dataclass(frozen=True)
class Asker:
    """Who asks, and the roles the rules know."""

    user_id: str
    name: str = ""
    owner: bool = False  # listed in EASEL_OWNER_IDS
    manages_server: bool = False  # Manage Server where they ask: the one moderator role

    @classmethod
    def host(cls, name: str = "cli") -> Asker:
        """Whoever runs the CLI on the host: an owner."""
        return cls("cli", name, owner=True)


@dataclass(frozen=True)
class Place:
    """Where a job is asked for: a server channel, a DM (no server), or the host's command line."""

    guild_id: str | None = None
    channel_id: str | None = None
    adult: bool = False  # an age-restricted channel, or a DM
    host: bool = False

    @classmethod
    def command_line(cls) -> Place:
        return cls(adult=True, host=True)


@dataclass(frozen=True)
class ImagineOptions:
    """What /imagine (or `generate`, or a picture's parameters) asks for. `given` holds the picture's
    parameters the person set, by their common/parameters.py names (None: not set); those left out
    take the place's defaults (negative, steps, CFG, sampler), the checkpoint family's, or the record's."""

    prompt: str
    given: Mapping[str, object] = field(default_factory=dict)
    checkpoint: str | None = None
    aspect: str | None = None
    size: tuple[int, int] | None = None  # the CLI's exact --size; the bot offers aspects
    lora: str | None = None  # /imagine's LoRA option: added to the prompt as <lora:NAME:STRENGTH>
    lora_strength: float = 1.0
    init_image: bytes | None = None  # img2img: the uploaded picture, as uploaded (read in bot/images/uploads.py)
    mask: bytes | None = None  # inpainting: the uploaded mask (white = redraw)
    styles: tuple[str, ...] = ()  # styles by name (bot/styles.py), merged into the prompts in order
    # An edit (common/editing.py): the pictures an edit model is to change as the prompt says, as uploaded
    edit_images: tuple[bytes, ...] = ()
    credit: str = ""  # said with the result: where an edit's picture came from
    note: str = ""  # said with the result too: what of the asked was left out, and why
    # ControlNet units (common/control.py): each with its picture as uploaded (the unit's `image` is
    # set once the picture is read)
    control: tuple[ControlAsk, ...] = ()
    edit_guidance: float | None = None  # an edit's guidance, whichever parameter the model takes it as

    @property
    def edits(self) -> bool:
        """Whether this asks for an edit: pictures given, or (a picture's parameters) kept ones named."""
        return bool(self.edit_images or self.given.get("edit_images"))

    @classmethod
    def of(cls, prompt: str, **values: Any) -> ImagineOptions:
        """Options from keyword values (tests, benches): this record's own fields, and the picture's
        parameters by their names."""
        own = {name: values.pop(name) for name in list(values) if name in _OWN_OPTIONS}
        return cls(prompt, values, **own)


_OWN_OPTIONS = (
    "checkpoint", "aspect", "size", "lora", "lora_strength", "init_image", "mask", "styles", "edit_images", "credit",
    "edit_guidance", "control", "note",
)  # fmt: skip


@dataclass(frozen=True)
class ControlAsk:
    """A ControlNet unit as a front end asks for it: its picture as uploaded, and the unit's settings."""

    picture: bytes
    unit: ControlUnit


MOST_EDIT_PICTURES = max(model.max_pictures for model in EDIT_MODELS.values())


@dataclass
class JobPlan:
    """Jobs that passed every rule of the place, not yet queued."""

    specs: list[ValidRequest]  # validated once, here; the service queues them as they are
    here: Effective
    seed: int = -1
    uploads: dict[str, bytes] = field(default_factory=dict)  # pictures to keep (by sha256) once it starts
    adult: bool = False  # asked in an age-restricted channel or a DM (or at the host's command line)

    @property
    def items(self) -> list[tuple[GenerationRequest, CheckpointRef]]:
        return [(spec.request, spec.checkpoint) for spec in self.specs]

    @property
    def spoiler(self) -> bool:
        """The place shows pictures behind a spoiler."""
        return self.here.spoiler

    def verdict(self, nsfw_score: float | None) -> str:
        """post | spoiler | withhold: what this place does with a picture the picture check scored so
        (None or an unreadable score: as if over the threshold, and never merely spoilered)."""
        return self.here.picture_verdict(nsfw_score, self.adult)

    @property
    def checkpoints(self) -> list[CheckpointRef]:
        return [spec.checkpoint for spec in self.specs]


class MissingCheckpoint(EaselError):
    """A picture's parameters name a checkpoint that is not installed here."""

    def __init__(self, model: str, model_hash: str) -> None:
        self.model, self.model_hash = model[:100], model_hash[:64]
        shown = f"{self.model} [{self.model_hash}]" if self.model_hash else self.model
        super().__init__(f"this picture was made with {shown}, which is not installed here")


def _number(params: dict[str, str], key: str, kind: type[int] | type[float], default: object = None) -> Any:
    """A parameter as a number, or `default` when the picture does not give it; a refusal when it is
    not one."""
    value = params.get(key, "").strip()
    if not value:
        return default
    try:
        return kind(float(value)) if kind is int and re.fullmatch(r"-?\d+(\.0+)?", value) else kind(value)
    except ValueError:
        raise EaselError(f"the picture's {key} {value[:40]!r} is not a number") from None


def _dynamic(p: Parameters) -> bool:
    """Whether a request's prompts are templates to expand (bot/wildcards.py)."""
    return p.dynamic and (is_template(p.prompt) or is_template(p.negative))


def _read_back(params: dict[str, str]) -> dict[str, Any]:
    """The parameters that carry their own infotext key, read back (common/parameters.py)."""
    found = {}
    for key in infotext_keys():
        present = [k for k in key.keys if params.get(k, "").strip()]
        if not present:
            continue
        if key.kind in (int, float):
            found[key.name] = _number(params, present[0], key.kind)
        else:
            found[key.name] = params[present[0]].strip()
    return found


SeedChoice = Callable[[JobRecord], int]


def reroll(record: JobRecord) -> int:
    return -1  # a new random seed


def same_seed(record: JobRecord) -> int:
    return record.seeds[0]


class Jobs:
    def __init__(
        self,
        registry: CheckpointRegistry,
        generation: GenerationService,
        guild_settings: GuildSettings | None,
        loras: LoraRegistry | None = None,
        embeddings: EmbeddingRegistry | None = None,
        inputs: InputStore | None = None,
        upscaling: UpscaleService | None = None,
        vaes: VaeRegistry | None = None,
        extra_terms: tuple[list[str], list[str]] = ([], []),
        text_encoders: TextEncoderRegistry | None = None,
        picture_check: PictureCheck | None = None,
        styles: StyleBook | None = None,
        wildcards: WildcardLibrary | None = None,
        controlnets: ControlNetRegistry | None = None,
        clip_vision: ClipVisionRegistry | None = None,
        annotators: AnnotatorRegistry | None = None,
        detectors: DetectorRegistry | None = None,
    ) -> None:
        self.registry = registry
        self.detectors = detectors
        self.controlnets = controlnets
        self.clip_vision = clip_vision
        self.annotators = annotators
        self.styles = styles
        self.wildcards = wildcards
        self.generation = generation
        self.guild_settings = guild_settings
        self.loras = loras
        self.embeddings = embeddings
        self.inputs = inputs
        self.upscaling = upscaling
        self.vaes = vaes
        self.text_encoders = text_encoders
        self.picture_check = picture_check  # for pictures no job made (models' previews)
        self.extra_terms = extra_terms  # owners' additions to the minors rule: (minor words, sexual words)
        self.upscalers = upscaling.registry if upscaling is not None else None
        # A picture decodes to up to ~50 MB in the bot's memory: two at a time, however many people upload.
        self._decoding = asyncio.Semaphore(2)
        # Reading a picture's parameters or enlarging it costs the bot's CPU with no queue in front:
        # one per person per cooldown (the generation queue's own cooldown, for jobs, is the service's).
        self.picture_cooldowns = Cooldowns(generation.limits.cooldown_seconds)

    # --- what applies where ----------------------------------------------------------------------

    async def rules(self, place: Place) -> Effective:
        """The defaults and policy of `place`; on the host's command line, only the bot's own limits."""
        if place.host or self.guild_settings is None:
            limits = self.generation.limits
            return Effective(None, None, nsfw="age-restricted", max_steps=limits.max_steps, max_images=limits.max_count)
        return await self.guild_settings.effective(place.guild_id, place.channel_id)

    async def shown(
        self, place: Place, here: Effective | None = None, family: str | None = None
    ) -> list[CheckpointEntry]:
        """Checkpoints shown here (runnable or not): present, not hidden, NSFW only where allowed."""
        here = here or await self.rules(place)
        return [
            e
            for e in await self.registry.list(status="present")
            if here.visible(e, place.adult) and (family is None or e.family == family)
        ]

    async def offered(self, place: Place, here: Effective | None = None) -> list[CheckpointEntry]:
        """Checkpoints that can be used here: those shown here that can run."""
        return [e for e in await self.shown(place, here) if e.runnable]

    async def loras_shown(self, place: Place, base: str | None = None) -> list[NetworkEntry]:
        """LoRAs shown here: present, NSFW-flagged ones only where NSFW is allowed; for `base` when given."""
        return await self._networks_shown(self.loras, place, base)

    async def embeddings_shown(self, place: Place, base: str | None = None) -> list[NetworkEntry]:
        """Embeddings shown here, by the same rule as LoRAs."""
        return await self._networks_shown(self.embeddings, place, base)

    async def _networks_shown(
        self, registry: NetworkRegistry | None, place: Place, base: str | None
    ) -> list[NetworkEntry]:
        if registry is None:
            return []
        here = await self.rules(place)
        nsfw_allowed = here.allow_nsfw(place.adult)
        return [e for e in await registry.list(status="present", base=base) if nsfw_allowed or not e.nsfw]

    @staticmethod
    def may_change(asker: Asker, requester_id: str | None) -> bool:
        """Delete a picture, cancel a job: the person who asked for it, or a moderator."""
        return asker.user_id == requester_id or asker.manages_server or asker.owner

    # --- plans: every rule, no queue yet -----------------------------------------------------------

    async def plan_imagine(self, asker: Asker, place: Place, options: ImagineOptions) -> JobPlan:
        here = await self.rules(place)
        if len(options.edit_images) > MOST_EDIT_PICTURES:  # before any is read
            raise EaselError(f"an edit takes at most {MOST_EDIT_PICTURES} input pictures, not {len(options.edit_images)}")
        ref, switched = await self._checkpoint(place, here, options.checkpoint, edit=options.edits)
        steps, cfg, sampler = family_defaults(ref, here.steps, here.cfg, here.sampler)
        defaults = Parameters(negative=here.negative, steps=steps, cfg=cfg, sampler=sampler, rng=here.rng)
        given = {name: value for name, value in options.given.items() if value is not None}
        if (model := edit_model(ref.family, ref.variant)) is not None:  # its model card's guidance
            defaults = replace(defaults, **{model.guidance_field: model.guidance})
            if options.edit_guidance is not None:  # /edit's guidance: the parameter this model's guidance is
                given[model.guidance_field] = options.edit_guidance
        uploads: dict[str, bytes] = {}
        init = await self._read_input(options.init_image, uploads) if options.init_image is not None else None
        mask = await self._read_input(options.mask, uploads) if options.mask is not None else None
        edits = [await self._read_input(picture, uploads) for picture in options.edit_images]
        if edits:
            given["edit_images"] = tuple(upload.sha256 for upload in edits)
        if len(options.control) > MAX_CONTROL_UNITS:  # before any is read
            raise EaselError(f"a job takes at most {MAX_CONTROL_UNITS} ControlNet units, not {len(options.control)}")
        followed = [await self._read_input(ask.picture, uploads) for ask in options.control]
        if followed:
            given["control"] = tuple(replace(ask.unit, image=upload.sha256) for ask, upload in zip(options.control, followed, strict=True))
        shaped_by = init or next(iter(edits or followed), None)
        if options.size is not None:
            width, height = options.size
        elif shaped_by is not None and options.aspect is None:  # the picture's own shape, at the model's size
            width, height = rescale(shaped_by.width, shaped_by.height, ref.native_size, self.generation.limits.min_size)
        else:
            width, height = size_for(options.aspect or here.aspect, ref.native_size)
        prompt = (
            options.prompt
            if options.lora is None
            else with_lora_tag(options.prompt, options.lora, options.lora_strength)
        )
        if options.styles:  # merged before every rule: the rules judge the prompt that is drawn
            if self.styles is None:
                raise StyleError("styles are not available here")
            chosen = await self.styles.resolve(list(options.styles), place.guild_id)
            prompt, given["negative"] = apply_styles(chosen, prompt, str(given.get("negative", defaults.negative)))
        asked = {
            **given,
            "prompt": prompt,
            "width": width,
            "height": height,
            "init_image": init.sha256 if init else None,
            "mask_image": mask.sha256 if mask else None,
        }
        request = self._request(asker, place, Parameters.of(asked, defaults))
        notes = tuple(note for note in (switched, options.credit, options.note) if note)
        return await self._checked([(request, ref)], here, place, uploads=uploads, notes=notes)

    async def plan_edit(
        self,
        asker: Asker,
        place: Place,
        instruction: str,
        pictures: list[bytes],
        *,
        checkpoint: str | None = None,
        given: Mapping[str, object] | None = None,
        after_job: str | None = None,
        credit: str = "",
        guidance: float | None = None,
    ) -> JobPlan:
        """An edit (common/editing.py): `pictures` changed as `instruction` says, by the checkpoint
        named, else (the Edit button) the edit model `after_job` ran on, else the place's default edit
        model, else the first one offered here. `credit` is said with the result; `guidance` is the edit
        model's own (FLUX.1 Kontext's distilled guidance, Qwen-Image-Edit's CFG)."""
        if not pictures:
            raise EaselError("an edit needs a picture to change; attach one")
        if checkpoint is None and after_job is not None:
            record = await self.generation.get_job(after_job)
            entry = await self.registry.find(record.row["checkpoint_sha256"]) if record is not None else None
            if entry is not None and entry.status == "present" and edit_model(entry.family, entry.variant) is not None:
                checkpoint = entry.name
        options = ImagineOptions(
            prompt=instruction,
            given=dict(given or {}),
            checkpoint=checkpoint,
            edit_images=tuple(pictures),
            credit=credit,
            edit_guidance=guidance,
        )
        return await self.plan_imagine(asker, place, options)

    async def plan_from_infotext(self, asker: Asker, place: Place, info: Infotext) -> JobPlan:
        """A picture's A1111 parameters ("Make this here") run with the installed checkpoint whose hash
        (or file name) they name, under the rules of the place. MissingCheckpoint when it is not here."""
        params = info.params
        model_hash, model = params.get("Model hash", "").strip(), params.get("Model", "").strip()
        entry = await self.registry.find(model_hash) if re.fullmatch(r"[0-9a-fA-F]{10,64}", model_hash) else None
        if entry is None and model:
            entry = await self.registry.find(model)
        if entry is None or entry.status != "present":
            raise MissingCheckpoint(model or "an unnamed checkpoint", model_hash)
        size = size_of(params)
        detail, detail_note = await self._detail_here(params)
        given = {
            "negative": info.negative,
            "steps": _number(params, "Steps", int),
            "cfg": _number(params, "CFG scale", float),
            "sampler": params.get("Sampler"),
            "schedule": params.get("Schedule type"),
            "seed": _number(params, "Seed", int, -1),
            "hires_scale": _number(params, "Hires upscale", float, 0.0),
            "hires_steps": _number(params, "Hires steps", int, 0),
            "hires_denoise": _number(params, "Denoising strength", float, 0.7),
            "hires_upscaler": params.get("Hires upscaler", "Latent"),
            "vae": await self._vae_named(params.get("VAE hash", ""), params.get("VAE", "")),
            "distilled_cfg": _number(params, "Distilled CFG Scale", float, None),  # Forge's, for Flux dev
            "rng": "GPU",  # A1111 writes no RNG key for its default source, whatever this place's is
            "dynamic": False,  # the prompt is the picture's own, already expanded: braces in it are text
            "regions": regions_from_infotext(params),  # the Regional Prompter's panel (common/regions.py)
            **detail,  # ADetailer's face and hand passes (common/detail.py)
            "edit_images": _edit_hashes(params),
            "control": units_from_infotext(params),  # with the pictures Easel kept for them
            **_read_back(params),
        }
        # A1111's extension writes its units but keeps no picture for them: drawn without, and said so.
        unpictured = "ControlNet 0" in params and not given["control"]
        control_note = "its ControlNet units were left out: the picture's parameters carry no picture for them" if unpictured else ""
        note = "; ".join(n for n in (control_note, detail_note) if n)
        options = ImagineOptions(prompt=info.prompt, given=given, checkpoint=entry.name, size=size, note=note)
        return await self.plan_imagine(asker, place, options)

    async def _detail_here(self, params: dict[str, str]) -> tuple[dict[str, object], str]:
        """The detail pass a picture's parameters describe, less its hand pass where no hand detector is
        installed (the rest of the picture is still made), and the note saying so."""
        found = detail_from_infotext(params)
        if found.get("detail") not in ("hands", "both"):
            return found, ""
        if self.detectors is not None and await self.detectors.for_target("hands") is not None:
            return found, ""
        note = f"its ADetailer hand pass was left out: no hand detector ({HAND_DETECTOR}) is installed here"
        return (found | {"detail": "faces"} if found["detail"] == "both" else {}), note

    async def read_parameters(self, picture: bytes, requester: str | None = None) -> tuple[str, Infotext]:
        """A picture's A1111 parameters (read off the loop), kept for "Make this here": (key, reading).
        `requester` (None: the host) is held to the per-person cooldown."""
        if self.inputs is None:
            raise EaselError("reading pictures is not available here")
        self._cool_down(requester)
        async with self._decoding:
            info = await asyncio.to_thread(read_picture_parameters, picture)
        text = render_infotext(info)
        key = hashlib.sha256(text.encode()).hexdigest()
        await self.inputs.put(key, text.encode(), ".txt")
        return key, info

    async def upscale(
        self,
        picture: bytes,
        upscaler: str,
        scale: float,
        progress: Callable[[int, int], None] | None = None,
        requester: str | None = None,
    ) -> Upscaled:
        """An uploaded picture enlarged on its own (A1111's Extras): read as every upload is, then
        upscaled to `scale` times its size by the upscaler named (a model, Lanczos or Nearest)."""
        if self.upscaling is None:
            raise EaselError("upscaling is not available here")
        self._cool_down(requester)
        async with self._decoding:
            try:
                read = await asyncio.to_thread(read_picture, picture)
                upload, parameters = read.upload, read.parameters
            except UploadError:
                raise
            except Exception:  # metadata PIL cannot read: a picture without parameters to keep
                upload, parameters = await asyncio.to_thread(read_upload, picture), None
        return await self.upscaling.upscale(upload, parameters, upscaler, scale, progress)

    async def picture_verdict(self, place: Place, nsfw_score: float | None) -> str:
        """post | spoiler | withhold: what `place` does with a picture the picture check scored so."""
        return (await self.rules(place)).picture_verdict(nsfw_score, place.adult)

    async def checks_pictures(self, place: Place) -> bool:
        """Whether a picture shown in `place` must pass the picture check first."""
        return (await self.rules(place)).checks_pictures(place.adult)

    async def model_preview_verdict(self, place: Place, picture: bytes) -> str:
        """post | spoiler | withhold for a preview shipped beside a model, to be shown in `place`:
        scored first wherever the picture check decides anything; unscored, it is withheld there."""
        here = await self.rules(place)
        if not here.checks_pictures(place.adult):
            return "post"
        score = await self.picture_check.score(picture) if self.picture_check is not None else None
        return here.picture_verdict(score, place.adult)

    def _cool_down(self, requester: str | None) -> None:
        if requester is not None:
            self.picture_cooldowns.check(requester)
            self.picture_cooldowns.record(requester)

    async def kept_parameters(self, key: str) -> Infotext:
        if self.inputs is None:
            raise EaselError("reading pictures is not available here")
        text = (await self.inputs.get(key, ".txt")).decode(errors="replace")
        return await asyncio.to_thread(parse_infotext, text)

    async def _kept_input(self, sha256: str | None) -> bytes | None:
        if sha256 is None:
            return None
        if self.inputs is None:
            raise EaselError("starting from a picture is not available here")
        return await self.inputs.get(sha256)

    async def _read_input(self, data: bytes, uploads: dict[str, bytes]) -> Upload:
        """An uploaded picture, read safely (off the loop), added to the plan's `uploads`: it is kept by
        its hash for reruns only once the plan starts, so a refused plan leaves nothing behind."""
        if self.inputs is None:
            raise EaselError("starting from a picture is not available here")
        async with self._decoding:
            upload = await asyncio.to_thread(read_upload, data)
        uploads[upload.sha256] = upload.png
        return upload

    async def plan_rerun(
        self,
        asker: Asker,
        place: Place,
        job_id: str,
        *,
        seed: SeedChoice = reroll,
        count: int | None = None,
        checkpoint: str | None = None,
        init_image: bytes | None = None,
        strength: float | None = None,
        hires_scale: float | None = None,
        detail: str | None = None,
    ) -> JobPlan:
        """Another job from a stored one — a new seed, more pictures, another checkpoint, (Vary) its
        picture redrawn at `strength`, (Upscale) the hires fix at `hires_scale`, or (Fix faces) its
        `detail` pass — under the rules
        of the place where the button was pressed. Upscale on a job that started from a picture has
        no first pass to redo: its picture (`init_image`) is redrawn, enlarged, at UPSCALE_REDRAW."""
        record = await self.generation.get_job(job_id)
        if record is None:
            raise EaselError(f"job {job_id} is not in the records any more")
        uploads: dict[str, bytes] = {}
        row, stored = record.row, record.parameters
        here = await self.rules(place)
        ref = await resolve_checkpoint(self.registry, checkpoint or row["checkpoint_sha256"])
        width, height = row["width"], row["height"]
        if ref.sha256 != row["checkpoint_sha256"]:  # the same shape, at the new model's native size
            width, height = rescale(width, height, ref.native_size)
        scale = hires_scale or 0.0
        hires = _hires_of(stored)
        if scale:  # a short job's second pass still runs at least one step (a 1-step job at 0.7: two)
            hires = {**_HIRES_OFF, **hires, "hires_scale": scale}
            denoise = hires["hires_denoise"]
            if denoise > 0 and denoising_steps(hires["hires_steps"] or stored.steps, denoise) < 1:
                hires["hires_steps"] = math.ceil(1 / denoise)
        if scale and ref.family in FLOW_FAMILIES and hires["hires_upscaler"] in LATENT_UPSCALERS:
            hires["hires_upscaler"] = "Lanczos"  # a flow model's latent is not enlarged here; its picture is
        enlarge = bool(scale and stored.init_image)
        if scale and not enlarge:
            init_image = None  # made from text: the hires fix draws it again from its seed
        if enlarge and init_image is None:
            raise EaselError("this message has no picture left to upscale")
        picture = await self._read_input(init_image, uploads) if init_image else None
        limits = self.generation.limits
        if picture is not None and enlarge:
            (width, height), hires, strength = upscaled_size(picture.width, picture.height, scale), {}, UPSCALE_REDRAW
            if max(width, height) > limits.max_size or width * height > limits.max_pixels:
                raise EaselError(
                    f"upscaled, this picture would be {width}x{height}, over this bot's size limit; "
                    "/upscale enlarges it without redrawing"
                )
        elif picture is not None:  # Vary: redraw the picture as it is, at its own size (a hires one too)
            grid = FAMILIES[ref.family].latent_grid if ref.family in FAMILIES else 8
            width, height, hires = picture.width // grid * grid, picture.height // grid * grid, {}
            if not limits.min_size <= min(width, height) <= max(width, height) <= limits.max_size:
                width, height = rescale(picture.width, picture.height, ref.native_size, limits.min_size)
        changes: dict[str, object] = {
            "width": width,
            "height": height,
            "seed": seed(record),
            "count": count or len(record.seeds),
            "vae": row["vae_sha256"] or "none",  # the VAE the job ran with, not what is the default now
            **(_HIRES_OFF | hires),
        }
        if strength is not None:
            changes["strength"] = strength
        if stored.control and ref.sha256 != row["checkpoint_sha256"]:  # its units' models, for the new base
            changes["control"] = await self._units_for(stored.control, ref.family)
        if detail is not None:
            changes["detail"] = detail
        if picture is not None:  # a Vary or an Upscale starts from the whole picture: no mask, no edit
            changes |= {"init_image": picture.sha256, "mask_image": None, "edit_images": (), **_WHOLE_PICTURE}
        request = self._request(asker, place, Parameters.of(changes, stored))
        return await self._checked([(request, ref)], here, place, uploads=uploads)

    async def plan_compare(
        self,
        asker: Asker,
        place: Place,
        prompt: str,
        checkpoints: list[str],
        seed: int = -1,
        *,
        negative: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        sampler: str | None = None,
    ) -> JobPlan:
        """The same prompt and seed on 2–6 checkpoints, each at its native size; None takes the place's default."""
        here = await self.rules(place)
        most = MAX_COMPARE if place.host else min(MAX_COMPARE, self.generation.limits.max_queued_per_user)
        refs = await resolve_all(self.registry, checkpoints, most)
        seed = seed if seed >= 0 else random_seed()
        items = []
        for ref in refs:  # each at its family's defaults where none was given (Flux: Euler, CFG 1)
            own_steps, own_cfg, own_sampler = family_defaults(ref, here.steps, here.cfg, here.sampler)
            parameters = Parameters(
                prompt=prompt,
                negative=here.negative if negative is None else negative,
                steps=own_steps if steps is None else steps,
                cfg=own_cfg if cfg is None else cfg,
                sampler=sampler or own_sampler,
                seed=seed,
            )
            request = self._request(asker, place, parameters)
            items.append((request, ref))
        return await self._checked(items, here, place, seed)

    async def start(self, plan: JobPlan) -> list[JobHandle]:
        """Queue a plan: all its jobs, or none (the service admits them under its lock); then keep its
        uploaded pictures for reruns (the queued jobs carry their own copies)."""
        if len(plan.specs) == 1:
            handles = [await self.generation.admit(plan.specs[0])]
        else:
            handles = await self.generation.admit_group(plan.specs)
        if plan.uploads and self.inputs is not None:
            for sha256, png in plan.uploads.items():
                await self.inputs.put(sha256, png)
        return handles

    # --- the rules ---------------------------------------------------------------------------------

    async def _checked(
        self,
        items: list[tuple[GenerationRequest, CheckpointRef]],
        here: Effective,
        place: Place,
        seed: int = -1,
        uploads: dict[str, bytes] | None = None,
        notes: tuple[str, ...] = (),
    ) -> JobPlan:
        """Every rule of the place, for every job of the plan: the one copy of them; `notes` are said
        to the requester with each job. With wildcards, every rule reads every picture's expansion."""
        pictures = sum(request.parameters.count for request, _ in items)
        limits = self.generation.limits
        items = [(await self._seeded(request), ref) for request, ref in items]
        texts_of = {id(request): await self._expanded(request) for request, _ in items}
        for request, _ in items:  # everywhere, the host's command line too: no place relaxes it
            check_texts(request.parameters, limits)  # bounded before the rule reads it
            for prompt, negative in texts_of[id(request)] or []:
                check_texts(replace(request.parameters, prompt=prompt, negative=negative), limits)
            # The text as the model gets it (LoRA tags included), read off the loop.
            prompts = [p for p, _ in texts_of[id(request)]] if texts_of[id(request)] else [request.parameters.prompt]
            try:
                await asyncio.to_thread(check_minors, prompts, *self.extra_terms)
            except EaselError:
                log.warning(
                    "prompt refused by the minors rule (requester %s, guild %s)", request.requester_id, place.guild_id
                )
                raise
        for request, ref in items:
            if not place.host:  # the owner at the host's command line is bound by the bot's limits only
                here.check_checkpoint(ref.name, ref.sha256, ref.nsfw, place.adult)
                for prompt, _ in texts_of[id(request)] or [(request.parameters.prompt, "")]:
                    check_prompt(prompt, here.blocked_words)
                here.check_request(request.parameters.steps, pictures)
        # LoRAs, sizes, CFG, sampler, seeds: before any queue, and only here.
        specs = []
        for request, ref in items:
            nsfw_allowed = here.allow_nsfw(place.adult)
            expanded = texts_of[id(request)]
            loras = await self._loras(expanded[0][0] if expanded else request.parameters.prompt, ref, nsfw_allowed)
            for prompt, _ in expanded[1:]:
                if await self._loras(prompt, ref, nsfw_allowed) != loras:
                    raise WildcardError(
                        "the wildcards chose different LoRAs for this job's pictures; keep <lora:…> tags out of "
                        "the wildcards, or make one picture at a time"
                    )
            embeddings, found = (), ()
            if self.embeddings is not None:
                texts = [text for pair in expanded for text in pair] or [request.parameters.prompt, request.parameters.negative]
                embeddings, found = await resolve_embeddings(self.embeddings, texts, ref, nsfw_allowed)
            uploads = uploads or {}
            init_png = uploads.get(request.parameters.init_image or "") or await self._kept_input(
                request.parameters.init_image
            )
            mask_png = uploads.get(request.parameters.mask_image or "") or await self._kept_input(
                request.parameters.mask_image
            )
            edit_pngs = await self._edit_pictures(request.parameters, ref, uploads)
            controlnets, control_pngs = await self._control(request.parameters, ref, uploads)
            # The detail pass's detectors, as installed (the rules refuse hands without one).
            detectors = await self.detectors.passes(request.parameters.detail) if self.detectors is not None else ()
            hires_model = await self._hires_model(request)
            ref, vae, vae_note = await self._parts(request, ref)
            demo_note = DEMO_NOTE if await asyncio.to_thread(is_demo, ref.sha256) else ""
            said = (*found, *(n for n in (vae_note, *notes, demo_note) if n))
            spec = validate(
                request, ref, limits, loras, embeddings, said, init_png, mask_png, hires_model, vae, edit_pngs,
                controlnets, control_pngs, detectors,
            )  # fmt: skip
            for prompt, negative in expanded if spec.parameters.regions else ():  # each picture's regions
                check_regions(spec.parameters, prompt, negative, ref)
            if expanded:
                spec = replace(spec, prompts=tuple(p for p, _ in expanded), negatives=tuple(n for _, n in expanded))
            specs.append(spec)
        return JobPlan(specs, here, seed, uploads or {}, place.adult)

    async def _edit_pictures(self, p: Parameters, ref: CheckpointRef, uploads: dict[str, bytes]) -> tuple[bytes, ...]:
        """An edit's input pictures: just uploaded, or kept from an earlier job (a rerun, a picture's
        parameters); the model is held to them before any is read."""
        if not p.edit_images:
            return ()
        check_edit_model(ref, len(p.edit_images))
        pictures: list[bytes] = []
        for sha256 in p.edit_images:
            try:
                pictures.append(uploads.get(sha256) or await self._kept_input(sha256))
            except EaselError:
                raise EaselError("an input picture of this edit is no longer kept here; attach it to /edit again") from None
        return tuple(pictures)

    async def _units_for(self, units: tuple[ControlUnit, ...], family: str) -> tuple[ControlUnit, ...]:
        """Units moved to another checkpoint: a model made for another base is chosen again by its
        preprocessor's word for this one (the rules then say if none is installed)."""
        moved = []
        for unit in units:
            entry = await self.controlnets.find(unit.model) if self.controlnets is not None and unit.model else None
            moved.append(replace(unit, model="") if entry is not None and entry.base != family else unit)
        return tuple(moved)

    async def _control(
        self, p: Parameters, ref: CheckpointRef, uploads: dict[str, bytes]
    ) -> tuple[tuple[ControlNetUse, ...], tuple[bytes, ...]]:
        """Each ControlNet unit's model (the one it names, else the one its preprocessor's word finds
        for the checkpoint's base) and its picture: just uploaded, or kept from an earlier job. The
        job rules (bot/rules/limits.py) judge them; on a checkpoint ControlNet cannot run on, none
        is looked for and the rules refuse the job."""
        if not p.control or ref.family not in CONTROL_FAMILIES:
            return (), ()
        if self.controlnets is None:
            raise EaselError("ControlNet is not available here")
        uses, pictures = [], []
        for unit in p.control:
            use = await self.controlnets.for_unit(unit.model, unit.module, ref.family)
            if use.layout.startswith("ip-adapter"):  # the CLIP vision encoder it reads the picture with
                use = await self._encoder_for(use)
            pre = preprocessor(unit.module)
            if pre.annotators:  # the networks its preprocessor runs (HED, lineart, OpenPose, …)
                if self.annotators is None:
                    raise EaselError(f"the {pre.name} preprocessor is not available here")
                use = with_annotators(use, await self.annotators.for_preprocessor(pre))
            uses.append(use)
            try:
                pictures.append(uploads.get(unit.image) or await self._kept_input(unit.image))
            except EaselError:
                raise EaselError("a ControlNet picture of this job is no longer kept here; attach it again") from None
        return tuple(uses), tuple(pictures)

    async def _encoder_for(self, use: ControlNetUse) -> ControlNetUse:
        adapter = await self.controlnets.find(use.sha256) if self.controlnets is not None else None
        entry = await self.clip_vision.for_adapter(adapter) if self.clip_vision is not None and adapter else None
        if entry is None:
            kind = "hidden width" if use.layout == "ip-adapter-plus" else "image embedding of width"
            raise EaselError(
                f"the IP-Adapter {use.name} reads pictures with a CLIP vision encoder ({kind} {adapter.rank if adapter else '?'}: "
                "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors for SD1.5's and the vit-h SDXL ones) in models/clip_vision; none is installed"
            )
        return with_encoder(use, entry)

    async def _seeded(self, request: GenerationRequest) -> GenerationRequest:
        """A request with wildcards gets its first seed now: each picture's prompt is drawn from its seed."""
        p = request.parameters
        if p.seed != -1 or not _dynamic(p):
            return request
        return replace(request, parameters=replace(p, seed=random_seed()))

    async def _expanded(self, request: GenerationRequest) -> list[tuple[str, str]]:
        """Each picture's prompt and negative, expanded from their wildcards (A1111's Dynamic Prompts,
        seeded with the picture's seed); [] when neither is a template."""
        p = request.parameters
        if not _dynamic(p):
            return []
        if self.wildcards is None:
            raise WildcardError("wildcards and {…|…} variants are not available here")
        seeds = [(p.seed + i) % 2**32 for i in range(max(p.count, 1))]
        library = await asyncio.to_thread(self.wildcards.current)
        prompts = await asyncio.to_thread(library.expand, p.prompt, seeds) if is_template(p.prompt) else [p.prompt] * len(seeds)
        negatives = (
            await asyncio.to_thread(library.expand, p.negative, seeds) if is_template(p.negative) else [p.negative] * len(seeds)
        )
        return list(zip(prompts, negatives, strict=True))

    async def _parts(self, request: GenerationRequest, ref: CheckpointRef) -> tuple[CheckpointRef, VaeUse | None, str]:
        """The checkpoint with what it lacks from the component store (a transformer-only Flux file:
        its text encoders and VAE), the job's VAE, and a note; a missing part is refused here, in one
        line that says which file goes where, before anything is queued."""
        vae, note = await self._vae(request, ref)
        if not ref.needs:
            return ref, vae, note
        parts = await find_parts(ref.needs, ref.family, self.text_encoders, self.vaes, vae)
        if parts.missing:
            raise parts.refusal(ref.name)
        return replace(ref, components=parts.found), None, note  # its VAE is one of the parts

    async def _vae(self, request: GenerationRequest, ref: CheckpointRef) -> tuple[VaeUse | None, str]:
        """The job's VAE: the one it names, else the checkpoint's default, else its own (None)."""
        if self.vaes is None:
            if request.parameters.vae and request.parameters.vae.strip().lower() not in ("none", "automatic"):
                raise EaselError("choosing a VAE is not available here")
            return None, ""
        return await self.vaes.choose(request.parameters.vae, ref.vae_sha256, ref.family)

    async def _vae_named(self, vae_hash: str, name: str) -> str | None:
        """The installed VAE a picture's "VAE hash" (or "VAE" file name) names; None when none is here,
        and the checkpoint's default then applies."""
        if self.vaes is None:
            return None
        found = await self.vaes.find(vae_hash) if re.fullmatch(r"[0-9a-fA-F]{10,64}", vae_hash.strip()) else None
        if found is None and name.strip():
            found = await self.vaes.find(Path(name.strip()).stem)
        return found.name if found is not None and found.status == "present" else None

    async def _hires_model(self, request: GenerationRequest) -> UpscalerUse | None:
        """The upscaler model a hires fix names, if it names one rather than a built-in upscaler."""
        if not request.parameters.hires_scale or self.upscalers is None:
            return None
        found = await self.upscalers.resolve(request.parameters.hires_upscaler)
        return found if isinstance(found, UpscalerUse) else None

    async def _loras(self, prompt: str, ref: CheckpointRef, nsfw_allowed: bool) -> tuple[LoraUse, ...]:
        """The LoRAs the prompt's tags name, each installed, for this checkpoint's base, within limits."""
        if self.loras is None:
            if lora_tags(prompt):
                raise EaselError("LoRAs are not available here")
            return ()
        return await resolve_loras(self.loras, prompt, ref, self.generation.limits, nsfw_allowed)

    async def _checkpoint(
        self, place: Place, here: Effective, name: str | None, *, edit: bool = False
    ) -> tuple[CheckpointRef, str]:
        """The named checkpoint, else the place's default (for an edit, its default edit model), else
        the first one offered here (that can edit, for an edit); and, when the place's default could
        not be used, a note that says so (never a silent switch)."""
        if name:
            return await resolve_checkpoint(self.registry, name, allow_path=place.host), ""
        note = ""
        default, what = (here.edit_checkpoint, "edit checkpoint") if edit else (here.checkpoint, "checkpoint")
        if default:
            entry = await self.registry.find(default)
            if entry is not None and entry.status == "present" and entry.runnable:
                return CheckpointRef.from_entry(entry), ""
            missing = entry.name if entry is not None else "no longer registered"
            note = f"this channel's default {what} ({missing}) cannot be used now"
        offered = await self.offered(place, here)
        if edit:
            offered = [e for e in offered if edit_model(e.family, e.variant) is not None]
            if not offered:
                raise EaselError(f"no checkpoint here can edit pictures; ask the bot's owner to install one ({install_hint()})")
        if not offered:
            raise EaselError("no checkpoint is installed yet; ask the bot's owner to add one")
        chosen = CheckpointRef.from_entry(offered[0])
        return chosen, f"{note}: {chosen.name} was used instead" if note else ""

    @staticmethod
    def _request(asker: Asker, place: Place, parameters: Parameters) -> GenerationRequest:
        return GenerationRequest(parameters, asker.user_id, asker.name, place.guild_id, place.channel_id)


_DEFAULTS = Parameters()
_HIRES_FIELDS = ("hires_scale", "hires_steps", "hires_denoise", "hires_upscaler")
_HIRES_OFF = {name: getattr(_DEFAULTS, name) for name in _HIRES_FIELDS}
# A1111's inpainting defaults (original content, the whole picture), for a rerun that drops the mask.
_WHOLE_PICTURE = {name: getattr(_DEFAULTS, name) for name in ("masked_content", "only_masked", "mask_padding")}


def _edit_hashes(params: dict[str, str]) -> tuple[str, ...]:
    """A picture's edit pictures (common/editing.py INFOTEXT_KEY), or a refusal saying what is wrong."""
    try:
        return read_hashes(params.get(INFOTEXT_KEY, ""), MOST_EDIT_PICTURES)
    except ValueError as e:
        raise EaselError(str(e)) from None


def _hires_of(parameters: Parameters) -> dict[str, Any]:
    """A stored job's hires fix, as parameters; empty when it had none."""
    if not parameters.hires_scale:
        return {}
    return {name: getattr(parameters, name) for name in _HIRES_FIELDS}
