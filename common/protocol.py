"""What crosses the boundary between the bot and a worker process. Plain dataclasses: no torch here.

Commands go bot -> worker (RunBatch, CancelJob, Shutdown); events come back (WorkerReady,
BatchProgress, JobPreview, JobDone, JobCancelled, BatchFailed, BatchFinished). A batch is one
pipeline call that serves one or more jobs with the same checkpoint, size, steps and sampler;
each job keeps its own prompt and seeds.

On the wire each message is one frame: its type name, a newline, and its fields as JSON (pydantic
checks them on the way in; pictures travel as base64). Nothing is pickled: a worker that loads files
from strangers must never be able to make the bot run code, and a malformed frame is just refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from common.frame_signing import SIGNED_FIELDS
from common.parameters import Parameters
from common.samplers import SAMPLERS, a1111_sampling, img2img_steps

_BYTES_AS_BASE64 = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
MAX_FRAME_BYTES = 256 << 20  # a batch of big pictures is tens of MB; a frame past this is refused



def denoising_steps(steps: int, strength: float) -> int:
    """Steps a sampler runs from a picture: `steps × strength`, as A1111 does by default (0: none)."""
    return int(steps * strength)


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The hires fix's pass-two size: A1111's int(size × scale), on the latent's grid of 8."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


# A1111's "Masked content" choices (modules/ui.py `inpainting_fill`), in its order.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")


def config_parts(pipeline_config: str | None) -> tuple[str, str]:
    """A config id's bundled folder and variant: "tiny-sdxl+edm" -> ("tiny-sdxl", "edm")."""
    base, _, variant = (pipeline_config or "").partition("+")
    return base, variant


@dataclass(frozen=True)
class ComponentUse:
    """A part a checkpoint file lacks, from the component store: a text encoder or a VAE file."""

    role: str  # clip_l | t5xxl | vae
    name: str  # the file's name, for messages
    path: str
    sha256: str


@dataclass(frozen=True)
class LoadRequest:
    """Everything the worker needs to turn a registered checkpoint into a pipeline."""

    path: str
    name: str  # registry slug, for messages
    family: str  # sd1 | sd2 | sdxl | ... (anything else is refused with its label)
    architecture: str  # human label, e.g. "SD2.x v-prediction"
    format: str  # safetensors | ckpt | diffusers
    pipeline_config: str | None  # bundled config folder id; None for diffusers folders
    prediction: str = "epsilon"  # epsilon | v
    sha256: str = ""
    zero_snr: bool = False  # the schedule rescaled to zero terminal SNR (a `ztsnr` v-prediction model)
    # What the file lacks (a transformer-only Flux file: its text encoders and VAE), by role.
    components: tuple[ComponentUse, ...] = ()
    variant: str = ""  # what the family's pipeline may differ by: Qwen-Image-Edit's "edit" or "edit-plus"

    @property
    def cache_key(self) -> str:
        """One pipeline per file and set of components: the same transformer with another T5 is another model."""
        key = self.sha256 or self.path
        return "+".join([key, *(f"{c.role}:{c.sha256}" for c in self.components)])


# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPart:
    """One job's share of a batch: its prompt and one seed per image."""

    job_id: str
    prompt: str  # the prompt as asked: with wildcards, the template (its infotext's `Template`)
    negative: str
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...] = ()  # A1111's variation seeds, one per seed, with a strength (gpu_worker/noise.py)
    # With wildcards, each picture's own expansion of the prompt and of the negative, one per seed.
    prompts: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()

    def prompt_of(self, index: int) -> tuple[str, str]:
        """The prompt and negative picture `index` is drawn from."""
        return (
            self.prompts[index] if self.prompts else self.prompt,
            self.negatives[index] if self.negatives else self.negative,
        )

    @property
    def templated(self) -> bool:
        return bool(self.prompts or self.negatives)


@dataclass(frozen=True)
class LoraUse:
    """A LoRA a batch applies, at A1111's two strengths: text encoder and UNet."""

    name: str  # as the prompt names it (infotext `Lora hashes`)
    path: str
    sha256: str  # identity: the adapter stays cached in the worker under it
    short_hash: str  # A1111's 12 hex
    te: float
    unet: float


@dataclass(frozen=True)
class EmbeddingUse:
    """A textual-inversion embedding whose name a prompt of the batch may use (the worker matches tokens)."""

    name: str  # the word, as A1111 matches it (its tokens)
    path: str
    sha256: str  # identity: its vectors stay cached in the worker under it
    short_hash: str  # A1111's 12 hex (infotext `TI hashes`)


@dataclass(frozen=True)
class UpscalerUse:
    """An upscaler model (ESRGAN family) a hires fix or an upscale runs."""

    name: str  # as A1111 names it: the file stem, or its name for a Real-ESRGAN release
    path: str
    sha256: str  # identity: the model stays loaded in the worker under it
    scale: int  # of one pass


@dataclass(frozen=True)
class VaeUse:
    """A VAE file that replaces the checkpoint's own for a batch (A1111's "SD VAE")."""

    name: str  # the file's name, as A1111's infotext "VAE" gives it
    path: str
    sha256: str  # identity: the module stays cached in the worker under it; A1111's "VAE hash" is [:10]
    format: str  # safetensors | pickle


@dataclass(frozen=True)
class ControlNetUse:
    """A ControlNet model a unit of the batch runs (common/control.py)."""

    name: str  # the file stem, as the A1111 extension lists it
    path: str
    sha256: str  # identity: the model stays cached in the worker under it
    short_hash: str  # A1111's old 8-hex model hash, as the extension writes it after the name
    base: str  # sd1 | sd2 | sdxl
    union_types: int = 0  # a ControlNet-Union model's control types (6, or ProMax's 8); 0: a plain ControlNet
    layout: str = ""  # original | diffusers | union | ip-adapter | ip-adapter-plus (bot/controlnets/detection.py)
    # An IP-Adapter (h94's, the A1111 extension runs it as a ControlNet unit): the CLIP vision encoder
    # it reads the picture with, from models/clip_vision; None for a ControlNet.
    encoder: ComponentUse | None = None
    # The annotator networks its preprocessor runs (HED, lineart, OpenPose's body, hands and face,
    # Depth Anything; models/ControlNetPreprocessor; each role its layout: gpu_worker/annotators.py);
    # none for a model-free preprocessor.
    annotators: tuple[ComponentUse, ...] = ()


@dataclass(frozen=True)
class DetectorUse:
    """One pass of the detail pass (common/detail.py): what it redraws and the detector file that finds
    them (ADetailer's YOLO files: gpu_worker/yolo.py; its role is the file's task, detect or segment);
    no file: faces as the picture check's detector reports them."""

    target: str  # faces | hands
    detector: ComponentUse | None = None


@dataclass(frozen=True)
class FetchTicket:
    """A file a remote worker lacks and may fetch for this batch (gpu_worker/model_fetch.py): where
    from, in order (the object store's presigned address, then the bot's share), and what it must be.
    Every address carries its own expiring token (bot/generation/model_share.py): nothing else is needed."""

    sha256: str  # what the bytes must hash to: checked before the file is used, deleted if they do not
    size: int  # bytes: a source that sends more is cut off
    suffix: str  # .safetensors, .ckpt, …: how the loader reads it
    name: str  # what it is, for messages ("checkpoint anything-v5")
    urls: tuple[str, ...]


@dataclass(frozen=True)
class RunBatch:
    __pydantic_config__ = _BYTES_AS_BASE64

    batch_id: str
    load: LoadRequest
    jobs: tuple[JobPart, ...]
    # What every job of the batch shares, final (size, sampler, schedule); each job's own prompt,
    # negative and seeds are its JobPart's.
    parameters: Parameters
    model_name: str = ""  # file stem, for the infotext "Model" field
    preview_every: int = 0  # steps between previews; 0 = none
    # And at least this long since the batch's last preview (0: none held back): a front end shows
    # one at most so often (Discord: an edit each 1.5 s), and each costs a VAE decode and a check.
    preview_seconds: float = 0.0
    loras: tuple[LoraUse, ...] = ()  # every job of a batch has the same LoRAs at the same strengths
    embeddings: tuple[EmbeddingUse, ...] = ()  # those any job's prompt or negative may name
    init_png: bytes | None = None  # img2img: the picture every job of the batch starts from (RGB PNG)
    mask_png: bytes | None = None  # inpainting: white = redraw, fitted to the size as init_png is
    hires_model: UpscalerUse | None = None  # an upscaler model enlarges pass one's picture
    vae: VaeUse | None = None  # None: the checkpoint's own VAE
    # An edit (common/editing.py): the input pictures the model reads, as plain RGB PNGs, in order.
    edit_pngs: tuple[bytes, ...] = ()
    # ControlNet (common/control.py): each unit's model and picture (plain RGB PNG), in the order of
    # the parameters' `control` units.
    controlnets: tuple[ControlNetUse, ...] = ()
    control_pngs: tuple[bytes, ...] = ()
    # The detail pass (parameters' `detail`): its passes in order, faces before hands, each with its detector.
    detectors: tuple[DetectorUse, ...] = ()
    # To a worker started with --fetch-missing that lacks some of the batch's files: where to fetch
    # each (the scheduler's rule: bot/generation/service.py `_pump`).
    fetch: tuple[FetchTicket, ...] = ()

    @classmethod
    def of(
        cls,
        batch_id: str,
        load: LoadRequest,
        jobs: tuple[JobPart, ...],
        width: int,
        height: int,
        steps: int,
        cfg: float = 7.0,
        sampler: str = "Euler",
        schedule: str = "Automatic",
        **values: Any,
    ) -> RunBatch:
        """A batch from keyword values (tests, benches, the worker's debug run): the batch's own
        fields, and the parameters by their names."""
        own = {name: values.pop(name) for name in list(values) if name in _BATCH_FIELDS}
        shared = {"width": width, "height": height, "steps": steps, "cfg": cfg, "sampler": sampler, "schedule": schedule}
        return cls(batch_id, load, jobs, Parameters.of(shared | values), **own)

    @property
    def width(self) -> int:
        return self.parameters.width or 0

    @property
    def height(self) -> int:
        return self.parameters.height or 0

    @property
    def a1111_sampling(self) -> bool:
        """Whether the sampler runs in A1111's k-diffusion form (common/samplers.py `a1111_sampling`)."""
        load = self.load
        return a1111_sampling(self.parameters.sampler, load.family, config_parts(load.pipeline_config)[1], load.zero_snr)

    @property
    def run_steps(self) -> int:
        """Steps the sampler runs: txt2img all; img2img A1111's `steps × strength` (rounded down, and
        one more in A1111's own samplers)."""
        p = self.parameters
        if self.init_png is None:
            return p.steps
        if self.a1111_sampling:
            return img2img_steps(p.steps, p.strength, exact=False)[1] + 1
        return max(1, denoising_steps(p.steps, p.strength))

    @property
    def prompt_steps(self) -> tuple[int, int]:
        """The steps prompt editing is scheduled over, pass one's and the hires pass's, as A1111
        (`setup_conds`, `calculate_hr_conds`): the job's steps — from a picture too — and the hires
        pass's own, twice those for its second-order samplers, whose schedules count model calls."""
        p = self.parameters
        factor = 2 if self.a1111_sampling and SAMPLERS[p.sampler].second_order else 1
        return p.steps * factor, (p.hires_steps or p.steps) * factor if p.hires_scale else 0

    @property
    def hires_size(self) -> tuple[int, int]:
        return hires_size(self.width, self.height, self.parameters.hires_scale)

    @property
    def hires_run_steps(self) -> int:
        p = self.parameters
        if not p.hires_scale:
            return 0
        if self.a1111_sampling:  # A1111 runs pass two's steps as asked, whatever the denoising
            return p.hires_steps or p.steps
        return max(1, denoising_steps(p.hires_steps or p.steps, p.hires_denoise))

    @property
    def total_steps(self) -> int:
        """Steps of one pipeline call's passes together: what progress counts to."""
        return self.run_steps + self.hires_run_steps

    @property
    def image_count(self) -> int:
        return sum(len(j.seeds) for j in self.jobs)


_BATCH_FIELDS = (
    "model_name", "preview_every", "preview_seconds", "loras", "embeddings", "init_png", "mask_png", "hires_model", "vae", "edit_pngs",
    "controlnets", "control_pngs", "detectors",
)  # fmt: skip


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    device: str
    pid: int
    torch_version: str
    dtype: str
    memory_total: int = 0  # bytes, of the device (RAM for a CPU worker)
    memory_free: int = 0


@dataclass(frozen=True)
class BatchLoading:
    batch_id: str
    checkpoint: str
    cache: str  # "device" (already there), "cpu" (copied back from the CPU tier), "disk", or "fetch" (a remote worker fetching files it lacks)


@dataclass(frozen=True)
class BatchProgress:
    batch_id: str
    step: int
    total: int
    elapsed: float
    it_per_s: float


@dataclass(frozen=True)
class JobPreview:
    __pydantic_config__ = _BYTES_AS_BASE64

    batch_id: str
    job_id: str
    step: int
    png: bytes
    # The picture check's score of this very preview (gpu_worker/safety.py); None: not checked, and
    # then the bot shows it only where the check decides nothing.
    nsfw_score: float | None = None


@dataclass(frozen=True)
class ImageResult:
    __pydantic_config__ = _BYTES_AS_BASE64

    png: bytes
    seed: int
    infotext: str
    # gpu_worker/safety.py: the highest exposed-nudity confidence in the picture; None: not checked,
    # which the bot treats as over every threshold (bot/rules/policy.py).
    nsfw_score: float | None = None
    nsfw_labels: dict[str, float] = field(default_factory=dict)  # per class, those found


@dataclass(frozen=True)
class JobDone:
    batch_id: str
    job_id: str
    images: tuple[ImageResult, ...]
    device: str
    load_seconds: float
    inference_seconds: float
    cache: str
    batch_size: int
    # The maps the job's ControlNet units read (common/control.py), checked like its pictures: shown
    # with the result where its verdict allows.
    maps: tuple[ImageResult, ...] = ()
    notes: tuple[str, ...] = ()  # what the worker found to say of the job (the detail pass found no face)


@dataclass(frozen=True)
class JobCancelled:
    batch_id: str
    job_id: str


@dataclass(frozen=True)
class BatchFailed:
    batch_id: str
    message: str  # one line, for the user
    job_ids: tuple[str, ...] = field(default_factory=tuple)
    # A fetching worker that could not fetch these files (sha256): its jobs go to another worker,
    # and it is not sent them again for those files (bot/generation/service.py).
    unfetched: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchFinished:
    """The worker is idle again."""

    batch_id: str
    loaded: tuple[str, ...] = ()  # cache keys of pipelines on the device, most recent last
    steps_per_second: float = 0.0
    memory_total: int = 0  # bytes, of the device (RAM for a CPU worker), as the batch ends
    memory_free: int = 0
    held_as: tuple[str, ...] = ()  # how each of `loaded` sits in memory: "whole", "model offload", … (gpu_worker/placement.py)


@dataclass(frozen=True)
class WorkerHeartbeat:
    """A remote worker, every second on the broker (gpu_worker/remote.py): who it is, what it can run,
    what it is doing. The bot presumes it gone when none arrives for a lease (bot/generation/remote.py)."""

    worker_id: str  # unique per process start: a restarted worker is a new worker
    machine: str
    device: str
    pid: int
    started_at: float
    memory_total: int  # bytes, of the device (RAM for a CPU worker)
    memory_free: int
    families: tuple[str, ...]  # of SUPPORTED_FAMILIES
    max_pixels: int  # the largest width × height it takes (0: no limit of its own)
    holds: tuple[str, ...]  # sha256 of every model file in its own models folder
    loaded: tuple[str, ...]  # cache keys of pipelines on its device
    batches: tuple[str, ...]  # batch ids received and not yet finished, the running one first
    steps_per_second: float = 0.0
    sent_at: float = 0.0  # the worker's clock, for `python bot.py workers` (the bot times leases by its own)
    held_as: tuple[str, ...] = ()  # how each of `loaded` sits in memory (gpu_worker/placement.py)
    fetches: bool = False  # started with --fetch-missing: fetches by hash the files a batch names and it lacks


# --- the wire ----------------------------------------------------------------------------------

MESSAGES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        RunBatch,
        CancelJob,
        Shutdown,
        WorkerReady,
        BatchLoading,
        BatchProgress,
        JobPreview,
        JobDone,
        JobCancelled,
        BatchFailed,
        BatchFinished,
        WorkerHeartbeat,
    )
}


class BadFrame(ValueError):
    """A frame that is not one of our messages; nothing in it was acted on."""


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(MESSAGES[name])


def encode(message: object) -> bytes:
    name = type(message).__name__
    if name not in MESSAGES:
        raise TypeError(f"{name} is not a worker message")
    return name.encode() + b"\n" + _adapter(name).dump_json(message)


# The largest frame of each message: past it a frame is refused before its JSON is parsed (three
# 60 MB heartbeats once held the bot's event loop for a second). Pictures travel in RunBatch (an
# img2img input), JobPreview and JobDone; everything else is a few lines.
MESSAGE_BYTES = {
    "RunBatch": MAX_FRAME_BYTES,
    "JobDone": MAX_FRAME_BYTES,
    "JobPreview": 16 << 20,  # a flow model's preview is decoded at the job's size
    "WorkerHeartbeat": 4 << 20,  # the sha256 of every file a worker holds: ~70 bytes each
}
OTHER_MESSAGE_BYTES = 64 << 10


def decode(frame: bytes) -> object:
    name, _, body = frame[:64].partition(b"\n")
    kind = name.decode("ascii", errors="replace")
    if kind not in MESSAGES:
        raise BadFrame(f"unknown message type {kind[:40]!r}")
    most = MESSAGE_BYTES.get(kind, OTHER_MESSAGE_BYTES)
    if len(frame) > most:
        raise BadFrame(f"a {kind} of {len(frame):,} bytes; at most {most:,}")
    body = frame[len(name) + 1 :]
    try:
        return _adapter(kind).validate_json(body)
    except ValidationError as e:
        raise BadFrame(f"malformed {kind}: {e.error_count()} problem(s), first: {e.errors()[0]['msg']}") from None


# --- the broker (Redis Streams, for workers on other machines) --------------------------------------
#
# Commands to one worker go on its own stream, read by its consumer group; every worker's events go
# on one stream the bot's group reads. An entry is two fields: the worker's id and one frame as
# above (JSON, validated on the way in), so a forged entry is refused as a bad frame would be.

BROKER_SCHEMES = ("redis://", "rediss://", "unix://")  # rediss:// is TLS


def is_broker_url(url: str) -> bool:
    return url.startswith(BROKER_SCHEMES)


EVENTS_STREAM = "easel:events"
WORKER_KEY_PREFIX = "easel:worker:"  # + worker id: its latest heartbeat frame, expiring (`bot.py workers`)
WORKER_KEY_SECONDS = 300
BOT_GROUP, WORKER_GROUP = "bot", "worker"
EVENTS_MAXLEN = 20_000  # trimmed (approximately) as it is written: heartbeats alone are one a second per worker


def commands_stream(worker_id: str) -> str:
    return f"easel:cmd:{worker_id}"


def broker_entry(worker_id: str, message: object) -> dict[str, bytes]:
    """An unsigned entry (a broker only the bot and its workers write to); Signer.fields signs one."""
    return {"w": worker_id.encode(), "m": encode(message)}


def read_broker_entry(fields: dict[bytes, bytes]) -> tuple[str, object]:
    """(sender, message) of a stream entry; BadFrame if it is not one of ours. A signed entry's
    signature is the receiver's to check (common/frame_signing.py): it holds the keys."""
    if not isinstance(fields, dict) or set(fields) not in ({b"w", b"m"}, SIGNED_FIELDS):
        raise BadFrame("a broker entry has the fields w and m, and a signed one k, e, q, t and s too")
    if len(fields[b"m"]) > MAX_FRAME_BYTES:
        raise BadFrame(f"a broker entry of {len(fields[b'm']):,} bytes; at most {MAX_FRAME_BYTES:,}")
    sender = fields[b"w"].decode("utf-8", errors="replace")
    if not 0 < len(sender) <= 200:
        raise BadFrame("a broker entry's sender is empty or too long")
    return sender, decode(fields[b"m"])


# --- merges (bot -> `python -m gpu_worker merge`, as JSON on stdin) ------------------------------


@dataclass(frozen=True)
class MergeSource:
    """Where one input tensor's bytes lie: which input, at which byte of the file, in which dtype."""

    role: str  # a | b | c | vae
    offset: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class MergeStep:
    """One output tensor and how to make it from its sources (A first, then B and C; or the VAE's)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    op: str  # copy | weighted_sum | add_difference | vae
    partial: bool
    sources: tuple[MergeSource, ...]


@dataclass(frozen=True)
class MergeOrder:
    """A merge the bot planned and checked; the worker only carries it out."""

    inputs: dict[str, str]  # role -> path
    steps: tuple[MergeStep, ...]
    multiplier: float
    out: str
    temp: str
    metadata: dict[str, str] = field(default_factory=dict)


# --- LoRAs baked into a checkpoint (bot -> `python -m gpu_worker bake`, as JSON on stdin) ------------


@dataclass(frozen=True)
class BakeOrder:
    """LoRAs to write into a copy of a checkpoint; the bot resolved and checked them all."""

    load: LoadRequest
    loras: tuple[LoraUse, ...]
    out: str
    temp: str
    metadata: dict[str, str] = field(default_factory=dict)


# --- a picture enlarged by an upscaler model (bot -> `python -m gpu_worker upscale`) ----------------


@dataclass(frozen=True)
class UpscaleOrder:
    """A picture to enlarge to an exact size; the bot read the picture and checked the size."""

    source: str  # a plain RGB PNG the bot wrote
    out: str  # where the PNG goes, with these text chunks (A1111: `parameters`, `postprocessing`)
    model: UpscalerUse | None  # None: `resample` (PIL's Lanczos or Nearest)
    width: int
    height: int
    texts: dict[str, str] = field(default_factory=dict)
    resample: str = "LANCZOS"


Order = MergeOrder | BakeOrder | UpscaleOrder


def encode_order(order: Order) -> bytes:
    return TypeAdapter(type(order)).dump_json(order)


def decode_order(raw: bytes, kind: type[Order] = MergeOrder) -> Order:
    try:
        return TypeAdapter(kind).validate_json(raw)
    except ValidationError as e:
        raise BadFrame(f"malformed {kind.__name__}: {e.errors()[0]['msg']}") from None
