"""ControlNet: a picture that steers the drawing (its edges, its lines, a blurred copy of it), as the
A1111 extension (Mikubill/sd-webui-controlnet) names, runs and writes it.

A job holds up to three units, each a picture, a preprocessor ("module", the extension's name for
it), a ControlNet model, a weight, the share of the steps it acts in and a control mode. The worker
turns the picture into the unit's map (gpu_worker/control_maps.py) and adds the model's residuals to
the UNet's (gpu_worker/controlnets.py); the map is shown with the result and the unit written in the
infotext under the extension's `ControlNet N` keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import EaselError

MAX_UNITS = 3
# The extension's Control Mode: residuals as they are; "My prompt is more important" scales the
# deeper ones down (0.825 per level, its soft injection); "ControlNet is more important" applies
# them to the conditional half of a CFG batch only (its cfg injection).
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODE = "Crop and Resize"  # the extension's default: the picture cropped to the job's shape
# Easel's own infotext key: each unit's picture by its sha256 (the kept input, bot/images/inputs.py),
# so "Make this here" can draw it again; the extension keeps no picture in the infotext.
IMAGES_KEY = "Control images"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Preprocessor:
    name: str  # the extension's module name
    word: str  # a word in the name of the ControlNet made for such maps (the extension's Control Type filter)
    threshold_a: float | None = None  # its sliders' defaults (None: it has no such slider)
    threshold_b: float | None = None
    needs: str = ""  # the annotator model file(s) it needs (lllyasviel/Annotators' names)
    # The annotator networks it runs, each (its layout, the file the extension names) from
    # models/ControlNetPreprocessor (bot/controlnets/annotators.py, gpu_worker/annotators.py);
    # none with `needs`: Easel does not run it yet.
    annotators: tuple[tuple[str, str], ...] = ()
    # Its control type on a ControlNet-Union model (xinsir's controlnet-union-sdxl-1.0 and ProMax: 0
    # openpose, 1 depth, 2 soft edge and scribble, 3 canny and lineart, 4 normal, 5 segmentation, and
    # on ProMax 6 tile, 7 inpainting); None: no Union type takes its map.
    union: int | None = None


# The annotator networks Easel runs, by layout (bot/controlnets/annotators.py tells them from a file's
# tensors; gpu_worker/annotators.py builds each).
ANNOTATOR_LAYOUTS = (
    "hed", "lineart", "lineart_anime", "openpose_body", "openpose_hand", "openpose_face", "depth_anything_v2",
    "depth_anything", "midas", "pidinet", "mlsd",
)  # fmt: skip
# Annotator networks, as (layout, the file the extension downloads): gpu_worker/annotators.py.
_HED = ("hed", "ControlNetHED.pth")
_PIDI = ("pidinet", "table5_pidinet.pth")
_BODY, _HAND, _FACE = ("openpose_body", "body_pose_model.pth"), ("openpose_hand", "hand_pose_model.pth"), ("openpose_face", "facenet.pth")

# The model-free preprocessors (the extension's scripts/preprocessor/legacy/processor.py), and those
# that need an annotator model, named so a refusal can say which file (lllyasviel/Annotators).
PREPROCESSORS: dict[str, Preprocessor] = {
    p.name: p
    for p in (
        Preprocessor("none", ""),
        Preprocessor("invert", ""),
        Preprocessor("canny", "canny", 100.0, 200.0, union=3),
        Preprocessor("scribble_xdog", "scribble", 32.0, union=2),
        Preprocessor("lineart_standard", "lineart", union=3),
        Preprocessor("threshold", "scribble", 127.0, union=2),
        Preprocessor("tile_resample", "tile", 1.0, union=6),
        Preprocessor("blur_gaussian", "tile", 9.0, union=6),
        Preprocessor("shuffle", "shuffle"),
        # IP-Adapter (h94's): the picture read by a CLIP vision encoder (ViT-H or ViT-bigG) from
        # models/clip_vision, its features given to the UNet's cross-attention beside the prompt's.
        Preprocessor("ip-adapter_clip_h", "ip-adapter"),
        Preprocessor("ip-adapter_clip_g", "ip-adapter"),
        Preprocessor("depth_anything_v2", "depth", needs="depth_anything_v2_vitl.safetensors", annotators=(("depth_anything_v2", "depth_anything_v2_vitl.safetensors"),), union=1),
        Preprocessor("depth_anything", "depth", needs="depth_anything_vitl14.pth", annotators=(("depth_anything", "depth_anything_vitl14.pth"),), union=1),
        Preprocessor("depth_midas", "depth", needs="dpt_hybrid-midas-501f0c75.pt", annotators=(("midas", "dpt_hybrid-midas-501f0c75.pt"),), union=1),
        Preprocessor("depth_zoe", "depth", needs="ZoeD_M12_N.pt"),
        Preprocessor("depth_leres", "depth", needs="res101.pth"),
        Preprocessor("depth_leres++", "depth", needs="res101.pth and latest_net_G.pth"),
        Preprocessor("openpose", "openpose", needs="body_pose_model.pth", annotators=(_BODY,), union=0),
        Preprocessor("openpose_hand", "openpose", needs="body_pose_model.pth and hand_pose_model.pth", annotators=(_BODY, _HAND), union=0),
        Preprocessor("openpose_face", "openpose", needs="body_pose_model.pth and facenet.pth", annotators=(_BODY, _FACE), union=0),
        Preprocessor("openpose_full", "openpose", needs="body_pose_model.pth, hand_pose_model.pth and facenet.pth", annotators=(_BODY, _HAND, _FACE), union=0),
        Preprocessor("dw_openpose_full", "openpose", needs="yolox_l.onnx and dw-ll_ucoco_384.onnx"),
        Preprocessor("softedge_hed", "softedge", needs="ControlNetHED.pth", annotators=(_HED,), union=2),
        Preprocessor("softedge_hedsafe", "softedge", needs="ControlNetHED.pth", annotators=(_HED,), union=2),
        Preprocessor("scribble_hed", "scribble", needs="ControlNetHED.pth", annotators=(_HED,), union=2),
        Preprocessor("softedge_pidinet", "softedge", needs="table5_pidinet.pth", annotators=(_PIDI,), union=2),
        Preprocessor("softedge_pidisafe", "softedge", needs="table5_pidinet.pth", annotators=(_PIDI,), union=2),
        Preprocessor("scribble_pidinet", "scribble", needs="table5_pidinet.pth", annotators=(_PIDI,), union=2),
        Preprocessor("lineart_realistic", "lineart", needs="sk_model.pth", annotators=(("lineart", "sk_model.pth"),), union=3),
        Preprocessor("lineart_coarse", "lineart", needs="sk_model2.pth", annotators=(("lineart", "sk_model2.pth"),), union=3),
        Preprocessor("lineart_anime", "lineart", needs="netG.pth", annotators=(("lineart_anime", "netG.pth"),), union=3),
        Preprocessor("normal_bae", "normal", needs="scannet.pt"),
        Preprocessor("mlsd", "mlsd", 0.1, 0.1, needs="mlsd_large_512_fp32.pth", annotators=(("mlsd", "mlsd_large_512_fp32.pth"),), union=3),
        Preprocessor("seg_ofade20k", "seg", needs="250_16_swin_l_oneformer_ade20k_160k.pth"),
    )
}
RUNNABLE = tuple(name for name, p in PREPROCESSORS.items() if not p.needs or p.annotators)
# The extension's older names, as its infotexts may carry them (global_state.py preprocessor_aliases).
ALIASES = {
    "invert (from white bg & black line)": "invert",
    "lineart_standard (from white bg & black line)": "lineart_standard",
    "depth": "depth_midas",
    "hed": "softedge_hed",
    "hed_safe": "softedge_hedsafe",
    "pidinet": "softedge_pidinet",
    "pidinet_safe": "softedge_pidisafe",
    "pidinet_scribble": "scribble_pidinet",
    "lineart": "lineart_realistic",
    "ip-adapter_clip_sd15": "ip-adapter_clip_h",
    "ip-adapter_clip_sdxl_plus_vith": "ip-adapter_clip_h",
    "ip-adapter_clip_sdxl": "ip-adapter_clip_g",
}
IP_ADAPTER_MODULES = ("ip-adapter_clip_h", "ip-adapter_clip_g")
# A Flux ControlNet-Union's control modes (InstantX's and Shakker-Labs' Union and Union Pro: canny 0,
# tile 1, depth 2, blur 3, pose 4, gray 5, low quality 6), by the preprocessor whose map each reads.
FLUX_UNION_MODES = {
    "canny": 0, "tile_resample": 1, "depth_anything_v2": 2, "depth_anything": 2, "depth_midas": 2, "blur_gaussian": 3,
    "openpose": 4, "openpose_hand": 4, "openpose_face": 4, "openpose_full": 4,
}  # fmt: skip
# A hires fix's second pass with these maps is always softly injected (the extension's hook.py: fewer
# artefacts from sharp edges enlarged).
SOFT_IN_HIRES = ("canny", "mlsd")


class ControlError(EaselError):
    """A unit that cannot be: the message says which and why, in one line, for the person."""


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit of a job (common/parameters.py `control`)."""

    image: str  # the kept picture's sha256 (bot/images/inputs.py)
    module: str = "none"  # the preprocessor, by the extension's name
    model: str = ""  # a registered ControlNet's name or hash; "" (until validated): the one the module's word finds
    weight: float = 1.0
    start: float = 0.0  # the share of the steps before it acts
    end: float = 1.0  # and after which it stops
    mode: str = "Balanced"
    threshold_a: float | None = None  # None: the module's default
    threshold_b: float | None = None


def preprocessor(name: str) -> Preprocessor:
    """The preprocessor `name` names (the extension's name or an older alias, any case); ControlError
    naming those Easel runs otherwise, or the file one needs."""
    wanted = name.strip().lower()
    found = PREPROCESSORS.get(ALIASES.get(wanted, wanted))
    if found is None:
        raise ControlError(f"no ControlNet preprocessor named {name.strip()!r}; choose one of {', '.join(RUNNABLE)}")
    if found.needs and not found.annotators:
        raise ControlError(
            f"the {found.name} preprocessor needs its annotator model ({found.needs}), which Easel does not run "
            "yet; make the map elsewhere and give it with the preprocessor none"
        )
    return found


def check_unit(unit: ControlUnit) -> ControlUnit:
    """A unit's numbers and names in range, the module's defaults filled in; ControlError otherwise."""
    module = preprocessor(unit.module)
    if not 0.0 <= unit.weight <= 2.0:
        raise ControlError(f"a ControlNet weight is between 0 and 2, not {unit.weight:g}")
    if not 0.0 <= unit.start < unit.end <= 1.0:
        raise ControlError(
            f"a ControlNet acts from a start to an end between 0 and 1, start first, not {unit.start:g} to {unit.end:g}"
        )
    mode = next((m for m in CONTROL_MODES if m.lower() == unit.mode.strip().lower()), None)
    if mode is None:
        raise ControlError(f"no control mode {unit.mode!r}; choose one of {', '.join(CONTROL_MODES)}")
    if not _SHA256.fullmatch(unit.image):
        raise ControlError("a ControlNet unit names its picture by sha256")
    a = module.threshold_a if unit.threshold_a is None else unit.threshold_a
    b = module.threshold_b if unit.threshold_b is None else unit.threshold_b
    for value in (a, b):
        if value is not None and not 0.0 <= value <= 255.0:
            raise ControlError(f"a preprocessor threshold is between 0 and 255, not {value:g}")
    return ControlUnit(unit.image, module.name, unit.model, unit.weight, unit.start, unit.end, mode, a, b)


def infotext_pairs(units: tuple[ControlUnit, ...], models: tuple[str, ...], short_side: int) -> dict[str, str]:
    """The extension's `ControlNet N` keys (its infotext.py: `Field Name: value` pairs, joined by
    ", "), `models` each unit's "name [hash]", and Easel's key for the pictures. The map is made at
    the job's size (the extension's Pixel Perfect), so Processor Res is its short side."""
    pairs = {}
    for index, (unit, model) in enumerate(zip(units, models, strict=True)):
        fields = {
            "Module": unit.module,
            "Model": model,
            "Weight": float(unit.weight),
            "Resize Mode": RESIZE_MODE,
            "Processor Res": short_side,
            "Threshold A": unit.threshold_a,
            "Threshold B": unit.threshold_b,
            "Guidance Start": float(unit.start),
            "Guidance End": float(unit.end),
            "Pixel Perfect": True,
            "Control Mode": unit.mode,
        }
        pairs[f"ControlNet {index}"] = ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
    if units:
        pairs[IMAGES_KEY] = ", ".join(unit.image for unit in units)
    return pairs


def units_from_infotext(params: dict[str, str]) -> tuple[ControlUnit, ...]:
    """The units an infotext's `ControlNet N` keys describe, with the pictures Easel's key names; ()
    when it names no picture for them (the extension's own infotexts: the picture is not in them).
    Unreadable units are left out, as the extension leaves them."""
    images = [h.strip() for h in params.get(IMAGES_KEY, "").split(",") if _SHA256.fullmatch(h.strip())]
    units = []
    for index in range(MAX_UNITS):
        text = params.get(f"ControlNet {index}")
        if text is None or index >= len(images):
            break
        fields = dict(item.strip().partition(": ")[::2] for item in text.split(","))
        try:
            units.append(
                ControlUnit(
                    images[index],
                    fields.get("Module", "none"),
                    re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", fields.get("Model", "")).strip(),
                    float(fields.get("Weight", 1.0)),
                    float(fields.get("Guidance Start", 0.0)),
                    float(fields.get("Guidance End", 1.0)),
                    fields.get("Control Mode", "Balanced"),
                    _number(fields.get("Threshold A")),
                    _number(fields.get("Threshold B")),
                )
            )
        except ValueError:
            continue
    return tuple(units)


def _number(text: str | None) -> float | None:
    return None if text is None or float(text) < 0 else float(text)  # the extension writes -1 for "no slider"
