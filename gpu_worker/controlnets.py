"""ControlNet on an SD1/SD2/SDXL pipeline: the models read from the files people have, and their
residuals added to the UNet's at the steps each unit acts in.

Files: the A1111/ComfyUI single files (`control_v11p_sd15_canny.pth` / `.safetensors`: the original
ControlNet layout, with or without `control_model.`) and diffusers-layout files (most SDXL ones),
converted by diffusers' `convert_controlnet_checkpoint`; ControlNet-Union SDXL (xinsir's, ProMax
too), each unit's map given with its control type. A ControlNet is a copy of its base UNet's
encoder, so its config is the loaded checkpoint's UNet config with the depths and widths its own
tensors have; a file for another base does not fit and is refused in one line.

The UNet is hooked (a forward pre-hook) for the pipeline call, as the extension hooks A1111's UNet
(scripts/hook.py): every unit acting at the step (its share of the pass's steps between its start
and end) runs on the UNet's own inputs (its first four channels on an inpainting checkpoint), its
residuals scaled by its weight and control mode, summed over units and handed to the UNet. The step
is the pipeline's callback count, so a sampler that calls the model twice a step stays on its step.

Models are kept in CPU RAM between batches (the last RESIDENT, by sha256) and put on the device
for a batch only: the placement's memory budget (gpu_worker/placement.py) is the checkpoint's.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from diffusers import (
    ControlNetModel,
    ControlNetUnionModel,
    DiffusionPipeline,
    FluxControlNetModel,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.initialization import no_init_weights

from common.control import FLUX_UNION_MODES, PREPROCESSORS, SOFT_IN_HIRES, ControlUnit
from common.protocol import ControlNetUse
from gpu_worker.annotators import AnnotatorCache, AnnotatorError, run_annotator
from gpu_worker.control_maps import control_map
from gpu_worker.init_images import prepare_init
from gpu_worker.latents import encode_pictures
from gpu_worker.loaded import LoadedPipeline
from gpu_worker.model_parts import PartError, load_exact

RESIDENT = 3  # SD1.5's are 0.7 GB in fp16, SDXL's up to 2.5 GB
SOFT_FACTOR = 0.825  # the extension's soft injection: each level deeper, this much weaker
_CONFIG_FIELDS = frozenset(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
_UNION_FIELDS = frozenset(inspect.signature(ControlNetUnionModel.__init__).parameters) - {"self"}


class ControlNetError(Exception):
    """A ControlNet cannot be used; the message says which and why, in one line, for the person."""


@dataclass
class ActiveUnit:
    unit: ControlUnit
    model: ControlNetModel | None  # None: an IP-Adapter's unit (its layers are in the UNet's attention)
    map: Image.Image  # at the job's size (the region's, for Only masked); an IP-Adapter's: its picture
    pooled: bool = False  # a shuffle model: residuals averaged over the picture, the conditional half only
    union: int | None = None  # on a ControlNet-Union model: the map's control type
    hints: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # the map by pass size
    flux: bool = False  # a Flux ControlNet: it reads the map as the VAE's packed latents
    packed: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # those latents by pass size

    def hint(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The map as the model reads it: (1, 3, H, W) in 0..1 at the pass's pixel size."""
        if (height, width) not in self.hints:
            picture = self.map if self.map.size == (width, height) else self.map.resize((width, height), Image.Resampling.BICUBIC)
            array = np.asarray(picture, dtype=np.float32) / 255.0
            self.hints[(height, width)] = torch.from_numpy(array).permute(2, 0, 1)[None].to(device, dtype)
        return self.hints[(height, width)]


@dataclass
class Control:
    """A batch's units, and where its pipeline call stands (the step callback moves it on)."""

    units: list[ActiveUnit]
    scale_factor: int = 8  # the VAE's: latent → pixel size
    # Model calls done in this pipeline call, of how many (the step callback's count: a second-order
    # sampler's two calls a step are two)
    step: int = 0
    total: int = 1
    pictures: int = 1  # pictures in the call: a model batch twice this size is CFG's, its unconditional half first
    hires: bool = False  # the hires fix's second pass
    size: tuple[int, int] = (0, 0)  # this pipeline call's picture size (a Flux unit's latents are at it)

    adapters: list[ActiveUnit] = field(default_factory=list)  # the IP-Adapter units, in the order they were loaded
    ip_processors: list = field(default_factory=list)  # the UNet's IP-Adapter attention processors

    @property
    def maps(self) -> list[Image.Image]:
        return [active.map for active in self.units]

    def pipeline_inputs(self) -> dict:
        """What the pipeline call takes for the IP-Adapters: their pictures (it encodes them, and
        an empty picture's for CFG's unconditional half, as diffusers does)."""
        return {"ip_adapter_image": [active.map for active in self.adapters]} if self.adapters else {}

    def set_adapter_scales(self) -> None:
        """Each IP-Adapter's weight at this step: its own inside its share of the steps, 0 outside."""
        fraction = self.step / self.total
        scales = [a.unit.weight if a.unit.start <= fraction <= a.unit.end else 0.0 for a in self.adapters]
        for processor in self.ip_processors:
            processor.scale = scales

    def begin(self, pictures: int, hires: bool) -> None:
        """A pipeline call starts: its pictures, and whether it is the hires fix's pass."""
        self.step, self.pictures, self.hires = 0, pictures, hires

    def crop(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> None:
        """Only masked: each map's region of the mask, enlarged to the job's size as the picture's is."""
        for active in self.units:
            active.map = active.map.crop(box).resize(size, Image.Resampling.LANCZOS)
            active.hints.clear()
            active.packed.clear()

    def encode_for(self, pipe: DiffusionPipeline, size: tuple[int, int]) -> None:
        """A Flux call at `size`: each Flux unit's map as the pipeline's VAE encodes and packs latents
        (its distribution's mode, so a job draws the same picture again), once per size."""
        self.size = size
        for active in self.units:
            if active.flux and size not in active.packed:
                picture = active.map if active.map.size == size else active.map.resize(size, Image.Resampling.BICUBIC)
                latents = encode_pictures(pipe, [picture])
                active.packed[size] = pipe._pack_latents(latents, *latents.shape)

    def residuals(self, sample: torch.Tensor, timestep: torch.Tensor, kwargs: dict) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """The units' summed residuals for this model call (down blocks', mid block's); None when no
        unit acts at this step."""
        fraction = self.step / self.total
        total: list[torch.Tensor] | None = None
        batch = sample.shape[0]
        for active in self.units:
            unit = active.unit
            if active.model is None or fraction < unit.start or fraction > unit.end:  # the extension's guidance_stopped
                continue
            model = active.model
            height, width = sample.shape[-2] * self.scale_factor, sample.shape[-1] * self.scale_factor
            hint = active.hint(height, width, sample.device, model.dtype).expand(batch, -1, -1, -1)
            added = kwargs.get("added_cond_kwargs")
            inputs = {
                "sample": sample[:, :4].to(model.dtype),  # an inpainting checkpoint's extra channels are the UNet's alone
                "timestep": timestep,
                "encoder_hidden_states": kwargs["encoder_hidden_states"].to(model.dtype),
                # SDXL's size and text embeddings (an IP-Adapter's image embeddings are the UNet's alone)
                "added_cond_kwargs": {k: v.to(model.dtype) for k, v in added.items() if k in ("text_embeds", "time_ids")} if added else None,
                "return_dict": False,
            }
            if active.union is not None:  # one map of one control type, as diffusers' Union pipeline passes it
                types = torch.zeros(batch, model.config.num_control_type, device=sample.device, dtype=model.dtype)
                types[:, active.union] = 1
                inputs |= {"controlnet_cond": [hint], "control_type": types, "control_type_idx": [active.union], "conditioning_scale": [1.0]}
            else:
                inputs["controlnet_cond"] = hint
            down, mid = model(**inputs)
            outputs = [*down, mid]
            scales = self._scales(unit, len(outputs), active)
            outputs = [o * s for o, s in zip(outputs, scales, strict=True)]
            if active.pooled:
                outputs = [o.mean(dim=(2, 3), keepdim=True) for o in outputs]
            if (unit.mode == "ControlNet is more important" or active.pooled) and batch == 2 * self.pictures:
                cond = torch.ones(batch, 1, 1, 1, device=sample.device, dtype=outputs[0].dtype)
                cond[: self.pictures] = 0  # the unconditional half gets none
                outputs = [o * cond for o in outputs]
            total = outputs if total is None else [t + o for t, o in zip(total, outputs, strict=True)]
        if total is None:
            return None
        return total[:-1], total[-1]

    def flux_samples(self, kwargs: dict) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None] | None:
        """The Flux units' summed block samples for this transformer call (double blocks', single
        blocks'); None when no unit acts at this step. Each unit's weight is its conditioning scale."""
        fraction = self.step / self.total
        hidden = kwargs["hidden_states"]
        blocks: list[torch.Tensor] | None = None
        singles: list[torch.Tensor] | None = None
        acted = False
        for active in self.units:
            unit, model = active.unit, active.model
            if model is None or not active.flux or fraction < unit.start or fraction > unit.end:
                continue
            batch = hidden.shape[0]
            mode = None
            if active.union is not None:
                mode = torch.full((batch, 1), active.union, dtype=torch.long, device=hidden.device)
            guidance = kwargs.get("guidance") if model.config.guidance_embeds else None
            b, s = model(
                hidden_states=hidden.to(model.dtype),
                controlnet_cond=active.packed[self.size].to(hidden.device, model.dtype).expand(batch, -1, -1),
                controlnet_mode=mode,
                conditioning_scale=unit.weight,
                encoder_hidden_states=kwargs["encoder_hidden_states"].to(model.dtype),
                pooled_projections=kwargs["pooled_projections"].to(model.dtype),
                timestep=kwargs["timestep"],
                img_ids=kwargs["img_ids"],
                txt_ids=kwargs["txt_ids"],
                guidance=guidance,
                return_dict=False,
            )
            acted = True
            if b is not None:
                blocks = list(b) if blocks is None else [x + y for x, y in zip(blocks, b, strict=True)]
            if s is not None:
                singles = list(s) if singles is None else [x + y for x, y in zip(singles, s, strict=True)]
        return (blocks, singles) if acted else None

    def _scales(self, unit: ControlUnit, count: int, active: ActiveUnit) -> list[float]:
        """Each residual's weight: the unit's, or with soft injection (My prompt is more important,
        and canny or mlsd maps in the hires pass) the extension's 13 soft weights, deepest last, zipped
        from the shallowest as its hook zips them (an SDXL model's 10 take the first 10)."""
        soft = unit.mode == "My prompt is more important" or (self.hires and unit.module in SOFT_IN_HIRES)
        if not soft:
            return [unit.weight] * count
        return [unit.weight * SOFT_FACTOR ** float(12 - i) for i in range(13)][:count]


@contextmanager
def controlled(unet: torch.nn.Module, control: Control | None) -> Iterator[None]:
    """The UNet with `control`'s residuals added while the block runs (nothing without units)."""
    if control is None or not control.units:
        yield
        return

    def before(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        control.set_adapter_scales()
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        found = control.residuals(sample, timestep, kwargs)
        if found is not None:
            kwargs = {**kwargs, "down_block_additional_residuals": tuple(found[0]), "mid_block_additional_residual": found[1]}
        return args, kwargs

    with _pre_hook(unet, before):
        yield


class ControlNetCache:
    def __init__(self, size: int = RESIDENT) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, str, str], torch.nn.Module] = OrderedDict()  # SD and Flux ControlNets
        self._encoders: OrderedDict[tuple[str, str], CLIPVisionModelWithProjection] = OrderedDict()
        self._on_device: list[torch.nn.Module] = []
        self._adapted: LoadedPipeline | None = None  # the pipeline IP-Adapters were loaded into
        self._annotators = AnnotatorCache()

    def prepare(
        self,
        uses: tuple[ControlNetUse, ...],
        pictures: tuple[bytes, ...],
        units: tuple[ControlUnit, ...],
        loaded: LoadedPipeline,
        size: tuple[int, int],
        seed: int,
    ) -> Control:
        """The batch's units: each model on the pipeline's device in its dtype, each map made at the
        job's `size`; IP-Adapters loaded into the pipeline's UNet with their encoder. A Flux
        ControlNet reads its map as the VAE's packed latents."""
        pipe, device, dtype = loaded.pipeline, loaded.device, loaded.dtype
        active, adapters = [], []
        for use, png, unit in zip(uses, pictures, units, strict=True):
            picture = prepare_init(png, size[0], size[1], "crop")
            if use.encoder is not None:
                adapters.append((use, ActiveUnit(unit, None, picture)))
                active.append(adapters[-1][1])
                continue
            made = control_map(picture, unit, seed, self._annotator(use, unit, device))
            if use.layout.startswith("flux"):
                model = self._get_flux(use, pipe.transformer, dtype)
                model.to(device)
                self._on_device.append(model)
                union = FLUX_UNION_MODES.get(unit.module) if use.union_types else None
                active.append(ActiveUnit(unit, model, made, union=union, flux=True))
                continue
            model = self._get(use, pipe.unet, dtype)
            model.to(device)
            self._on_device.append(model)
            pooled = "shuffle" in use.name.lower()  # the v1.1 shuffle model's config: global average pooling
            union = PREPROCESSORS[unit.module].union if use.union_types else None
            active.append(ActiveUnit(unit, model, made, pooled, union))
        control = Control(active)
        if adapters:
            control.adapters = [unit for _, unit in adapters]
            control.ip_processors = self._adapt(loaded, [use for use, _ in adapters])
        return control

    def _annotator(self, use: ControlNetUse, unit: ControlUnit, device: torch.device | str) -> Callable[[np.ndarray], np.ndarray] | None:
        """The unit's annotator networks as a map maker (gpu_worker/annotators.py), or None."""
        if not use.annotators:
            return None
        try:
            networks = {a.role: self._annotators.get(a.path, a.sha256, a.role, a.name) for a in use.annotators}
        except AnnotatorError as e:
            raise ControlNetError(str(e)) from None
        return partial(run_annotator, networks, unit.module, device=device, thresholds=(unit.threshold_a, unit.threshold_b))

    def _get_flux(self, use: ControlNetUse, transformer: torch.nn.Module, dtype: torch.dtype) -> FluxControlNetModel:
        return self._cached(use, transformer.config, dtype, lambda: load_flux_controlnet(Path(use.path), use.name, transformer.config, dtype))  # type: ignore[return-value]

    def release(self) -> None:
        """The batch's models back to CPU RAM, and its IP-Adapters out of the pipeline."""
        for model in self._on_device:
            model.to("cpu")
        self._on_device.clear()
        if self._adapted is not None:
            loaded, self._adapted = self._adapted, None
            loaded.pipeline.unload_ip_adapter()
            for pipe in (loaded.pipeline, *loaded.derived.values()):
                pipe.register_modules(image_encoder=None, feature_extractor=None)

    def _adapt(self, loaded: LoadedPipeline, uses: list[ControlNetUse]) -> list:
        """The IP-Adapters loaded into the pipeline's UNet (diffusers' loader, from their state dicts),
        the encoder of the first registered on it and the pipelines made from it; the UNet's
        IP-Adapter attention processors."""
        assert uses[0].encoder is not None
        encoder = self._encoder(uses[0].encoder.path, uses[0].encoder.sha256, loaded.dtype)
        encoder.to(loaded.device)
        self._on_device.append(encoder)
        size = encoder.config.image_size
        for pipe in (loaded.pipeline, *loaded.derived.values()):
            pipe.register_modules(image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        self._adapted = loaded
        states = [read_ip_adapter(Path(use.path), use.name, loaded.dtype) for use in uses]
        try:
            loaded.pipeline.load_ip_adapter(states, subfolder=[""] * len(states), weight_name=[""] * len(states), image_encoder_folder=None)
        except (KeyError, RuntimeError, ValueError) as e:
            raise ControlNetError(
                f"the IP-Adapter {uses[0].name} does not fit this checkpoint ({type(e).__name__}); is it for its base model?"
            ) from None
        return [p for p in loaded.pipeline.unet.attn_processors.values() if isinstance(getattr(p, "scale", None), list)]

    def _encoder(self, path: str, sha256: str, dtype: torch.dtype) -> CLIPVisionModelWithProjection:
        key = (sha256, str(dtype))
        found = self._encoders.pop(key, None) or load_clip_vision(Path(path), dtype)
        self._encoders[key] = found
        while len(self._encoders) > 1:  # ViT-H is 2.5 GB in float32: one at a time
            self._encoders.popitem(last=False)
        return found

    def _get(self, use: ControlNetUse, unet: UNet2DConditionModel, dtype: torch.dtype) -> ControlNetModel:
        return self._cached(use, unet.config, dtype, lambda: load_controlnet(Path(use.path), use.name, unet.config, dtype))

    def _cached(self, use: ControlNetUse, base_config: dict, dtype: torch.dtype, load: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """The model, built for its base model's config: the same file beside another base is another
        model; the last few kept in CPU RAM."""
        key = (use.sha256, str(dtype), repr(sorted(base_config.items())))
        found = self._models.pop(key, None) or load()
        self._models[key] = found
        while len(self._models) > self.size:
            self._models.popitem(last=False)
        return found


def load_flux_controlnet(path: Path, name: str, transformer_config: dict, dtype: torch.dtype) -> FluxControlNetModel:
    """A Flux ControlNet in diffusers' layout (InstantX's and Shakker-Labs' files, their Union ones
    too), sized by its tensors, its attention the loaded transformer's; ControlNetError otherwise."""
    if not path.is_file():
        raise ControlNetError(f"the ControlNet {name} is no longer on disk")
    state = dict(safetensors.torch.load_file(str(path)))
    try:
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")}
        singles = {int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")}
        config = {
            "in_channels": state["x_embedder.weight"].shape[1],
            "num_layers": len(blocks),
            "num_single_layers": len(singles),
            "attention_head_dim": transformer_config["attention_head_dim"],
            "num_attention_heads": transformer_config["num_attention_heads"],
            "joint_attention_dim": state["context_embedder.weight"].shape[1],
            "pooled_projection_dim": state["time_text_embed.text_embedder.linear_1.weight"].shape[1],
            "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in state,
            "axes_dims_rope": list(transformer_config["axes_dims_rope"]),
            "num_mode": state["controlnet_mode_embedder.weight"].shape[0] if "controlnet_mode_embedder.weight" in state else None,
        }
        with torch.device("meta"):
            model = FluxControlNetModel.from_config(config)
        load_exact(model, {k: v.to(dtype) for k, v in state.items()}, f"the ControlNet {name}")
    except PartError as e:
        raise ControlNetError(f"{e}; is it a Flux ControlNet for this checkpoint?") from None
    except (KeyError, IndexError, ValueError, RuntimeError) as e:
        raise ControlNetError(f"the ControlNet {name} cannot be read as a Flux ControlNet for this checkpoint ({type(e).__name__})") from None
    return model


@contextmanager
def controlled_flux(transformer: torch.nn.Module, control: Control | None) -> Iterator[None]:
    """The Flux transformer with `control`'s block samples added while it runs (nothing without units)."""
    if control is None or not control.units:
        yield
        return

    def before(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        found = control.flux_samples(kwargs)
        if found is not None:
            kwargs = {**kwargs, "controlnet_block_samples": found[0], "controlnet_single_block_samples": found[1], "controlnet_blocks_repeat": False}
        return args, kwargs

    with _pre_hook(transformer, before):
        yield


@contextmanager
def _pre_hook(module: torch.nn.Module, hook: Callable) -> Iterator[None]:
    """`hook` before each forward call of `module` (with its keyword arguments), removed after."""
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def load_controlnet(path: Path, name: str, unet_config: dict, dtype: torch.dtype) -> ControlNetModel:
    """The ControlNet in `path` for a UNet of `unet_config`, in CPU RAM; ControlNetError when the file
    is gone, is not a ControlNet, or is one for another base model. A pickle was vetted by the bot's
    allow-list reader; torch reads it again with weights_only."""
    if not path.is_file():
        raise ControlNetError(f"the ControlNet {name} is no longer on disk")
    if path.suffix.lower() == ".safetensors":
        raw: dict = dict(safetensors.torch.load_file(str(path)))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        raw = raw.get("state_dict", raw) if isinstance(raw, dict) else {}
    state = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    try:
        converted = convert_controlnet_checkpoint(state, dict(unet_config)) | _added_embedding(state)
        converted = {k: v.to(dtype) for k, v in converted.items() if v is not None}
        config = controlnet_config(unet_config, converted)
        model_cls = ControlNetUnionModel if "task_embedding" in converted else ControlNetModel
        with torch.device("meta"):
            model = model_cls.from_config(config)
        load_exact(model, converted, f"the ControlNet {name}")
    except PartError as e:
        raise ControlNetError(f"{e}; is it a ControlNet for this checkpoint's base model?") from None
    except (KeyError, IndexError, ValueError, RuntimeError) as e:
        raise ControlNetError(f"the ControlNet {name} cannot be read as a ControlNet for this checkpoint ({type(e).__name__})") from None
    return model


def read_ip_adapter(path: Path, name: str, dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """h94's file as diffusers' loader takes it: {"image_proj": …, "ip_adapter": …} (a .bin holds
    those two dicts; a .safetensors file their keys with those prefixes)."""
    if not path.is_file():
        raise ControlNetError(f"the IP-Adapter {name} is no longer on disk")
    if path.suffix.lower() == ".safetensors":
        flat = safetensors.torch.load_file(str(path))
        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in flat.items():
            part, _, rest = key.partition(".")
            if part in state:
                state[part][rest] = tensor
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state = {part: dict(loaded.get(part, {})) for part in ("image_proj", "ip_adapter")} if isinstance(loaded, dict) else {}
    if not state or not state["image_proj"] or not state["ip_adapter"]:
        raise ControlNetError(f"the IP-Adapter {name} has no image projection or attention weights")
    return {part: {k: v.to(dtype) for k, v in tensors.items() if isinstance(v, torch.Tensor)} for part, tensors in state.items()}


def load_clip_vision(path: Path, dtype: torch.dtype) -> CLIPVisionModelWithProjection:
    """A CLIP vision encoder in transformers' layout, its config from its tensors (width, depth, patch,
    picture size, embedding); heads as the released ViT-L/H/bigG have them (64 wide at ViT-L's 1024,
    80 at ViT-H's 1280, 104 at bigG's 1664), a width's sixteenth otherwise (the tiny test encoders)."""
    if not path.is_file():
        raise ControlNetError(f"the CLIP vision encoder {path.name} is no longer on disk")
    state = {k.removeprefix("model."): v for k, v in safetensors.torch.load_file(str(path)).items()}
    try:
        config = _clip_vision_config(state)
    except (KeyError, IndexError, ValueError):
        raise ControlNetError(f"the CLIP vision encoder {path.name} is not one in transformers' layout") from None
    with no_init_weights():  # every weight comes from the file (its position ids are a buffer it makes)
        model = CLIPVisionModelWithProjection(config).to(dtype)
    try:
        load_exact(model, {k: v.to(dtype) for k, v in state.items() if not k.endswith("position_ids")}, f"the CLIP vision encoder {path.name}")
    except PartError as e:
        raise ControlNetError(str(e)) from None
    return model


def _clip_vision_config(state: dict[str, torch.Tensor]) -> CLIPVisionConfig:
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = {int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers.")}
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=max(layers) + 1,
        num_attention_heads={1024: 16, 1280: 16, 1664: 16}.get(hidden, max(1, hidden // 16)),
        patch_size=patch_size,
        image_size=round((positions - 1) ** 0.5) * patch_size,
        projection_dim=state["visual_projection.weight"].shape[0],
        hidden_act="gelu",
    )


def _added_embedding(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An SDXL ControlNet's size-and-crop embedding in the original layout (`label_emb`), which
    diffusers' converter leaves out, under diffusers' names."""
    found = {}
    for prefix in ("control_model.label_emb.0.", "label_emb.0."):
        for ldm, ours in (("0.", "linear_1."), ("2.", "linear_2.")):
            for param in ("weight", "bias"):
                if prefix + ldm + param in state:
                    found[f"add_embedding.{ours}{param}"] = state[prefix + ldm + param]
    return found


def controlnet_config(unet_config: dict, state: dict[str, torch.Tensor]) -> dict:
    """The base UNet's config with the ControlNet's own depths and widths from its tensors: its
    transformer layers per block (SDXL's small and mid ControlNets have fewer) and its map encoder's
    widths."""
    union = "task_embedding" in state
    fields = _UNION_FIELDS if union else _CONFIG_FIELDS
    config = {k: v for k, v in dict(unet_config).items() if k in fields}
    config["in_channels"] = 4  # an inpainting checkpoint's UNet takes 9; its ControlNets take the latents
    depths = []
    for block in range(len(config["down_block_types"])):
        layers = {int(k.split(".")[5]) for k in state if k.startswith(f"down_blocks.{block}.attentions.0.transformer_blocks.")}
        depths.append(max(layers) + 1 if layers else 1)
    config["transformer_layers_per_block"] = depths
    widths = [state["controlnet_cond_embedding.conv_in.weight"].shape[0]]
    widths += [state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in range(1, 6, 2)]
    config["conditioning_embedding_out_channels"] = tuple(widths)
    if union:  # its control types and the small transformer that weighs the maps, from their tensors
        types, channels = state["task_embedding"].shape
        layers = {int(k.split(".")[1]) for k in state if k.startswith("transformer_layes.")}
        config |= {
            "num_control_type": types,
            "num_trans_channel": channels,
            "num_trans_layer": max(layers) + 1 if layers else 1,
            "num_proj_channel": state["spatial_ch_projs.weight"].shape[0],
        }
    return config
