"""ADetailer's detector files read without ultralytics and without running anything they hold.

ADetailer (Bing-su/adetailer) finds faces, hands and people with YOLOv8 models trained by ultralytics
(`face_yolov8n.pt`, `face_yolov8s.pt`, `hand_yolov8n.pt`, `person_yolov8n-seg.pt`, … from
Bingsu/adetailer on Hugging Face), kept in `models/adetailer` (ComfyUI's Impact Pack keeps the same
files in `models/ultralytics/bbox` and `models/ultralytics/segm`). Such a file is not a state dict: its
pickle holds the whole model object — ultralytics' and torch's module classes, their settings, and
the tensors inside them — and ultralytics unpickles it whole, running what it names.

Here the bounded pickle interpreter (common/safe_pickle.py) reads it with one more allowance: a class
from ultralytics' or torch's module packages becomes an inert record of its recorded state — nothing is
imported, constructed or called. From those records we take the layers (each one's class name, its
settings such as channels, kernel and stride, and where its input comes from), the class names the
model finds, and its tensors by their state-dict names. gpu_worker/yolo.py builds our own network
from that and runs it; the bot registers the file (bot/detectors.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.errors import CheckpointFileError
from common.pickle_reader import checked_tensors, read_pickle_root
from common.safe_pickle import Allowed, Opaque, PickledTensor

DETECTOR_FOLDERS = ("adetailer", "ultralytics")  # ADetailer's models/adetailer; ComfyUI's models/ultralytics/{bbox,segm}
# The modules of the YOLOv8 detection and segmentation models (ultralytics' nn/modules and torch's):
# what gpu_worker/yolo.py builds. Another layer (YOLOv9's RepNCSPELAN4, YOLO11's C3k2, …) is named and not run.
RUN_MODULES = frozenset(
    {
        "Conv", "DWConv", "Conv2d", "ConvTranspose2d", "BatchNorm2d", "SiLU", "Identity", "C2f", "Bottleneck", "SPPF",
        "MaxPool2d", "Upsample", "Concat", "Detect", "Segment", "Proto", "DFL", "Sequential", "ModuleList",
    }
)  # fmt: skip
TASKS = {"DetectionModel": "detect", "SegmentationModel": "segment"}
MAX_LAYERS = 400
MAX_CLASSES = 1000
_MODULE_PACKAGES = ("ultralytics.nn.", "torch.nn.modules.")
# Other names such files hold, kept inert and never used: the training's settings (a namespace), the
# loss and assigner some versions attach to the model, a bound `forward` (getattr), dill's type loader,
# numpy's dtype classes, paths.
_INERT_PACKAGES = ("ultralytics.utils", "ultralytics.yolo.utils", "ultralytics.nn.tasks")
_INERT = frozenset(
    {
        ("builtins", "getattr"), ("dill._dill", "_load_type"), ("numpy.dtypes", "Float64DType"),
        ("numpy.dtypes", "Float32DType"), ("numpy.dtypes", "Int64DType"), ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"), ("torch", "device"), ("torch", "Size"), ("torch", "float16"), ("torch", "float32"),
    }
)  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """One module of the model as its file records it: its class's name, the plain settings its
    constructor set (channels, kernel size, stride, the layers it reads: `f`), the names of its own
    tensors, and its child modules by attribute name."""

    kind: str
    settings: dict[str, object]
    tensors: tuple[str, ...]
    children: dict[str, Layer] = field(default_factory=dict)


@dataclass(frozen=True)
class DetectorFile:
    """What a detector file holds. `reason` says why Easel cannot run it ("" when it can)."""

    task: str  # detect | segment | "" (another kind of model)
    classes: tuple[str, ...]  # what it finds, by class index ("face", "hand", "person")
    layers: tuple[Layer, ...]  # the model's `model` list, in order
    tensors: dict[str, PickledTensor]  # by state-dict name: "model.0.conv.weight" …
    prefix: str  # the zip archive's folder: where the worker reads the tensors' bytes
    version: str  # the ultralytics version that saved it, when it says
    reason: str = ""


def detector_global(module: str, name: str) -> Allowed | None:
    """The pickle's names a detector file may use beyond a state dict's, each an inert record."""
    if not (name.isidentifier() and all(part.isidentifier() for part in module.split("."))):
        return None
    if module.startswith(_MODULE_PACKAGES + _INERT_PACKAGES) or module in _INERT_PACKAGES or (module, name) in _INERT:
        kind = f"{module}.{name}"
        return Allowed(kind, lambda args: Opaque(args, kind), newobj=True)
    return None


def read_detector(path: Path) -> DetectorFile:
    """The detector in `path`; CheckpointFileError when the file is unsafe, malformed or no ultralytics model."""
    prefix, storages, root = read_pickle_root(path, detector_global)
    if not isinstance(root, dict):
        raise CheckpointFileError("not an ultralytics model file (its pickle holds no dict)")
    model = root.get("model") if isinstance(root.get("model"), Opaque) else root.get("ema")
    if not isinstance(model, Opaque) or not isinstance(model.state, dict):
        raise CheckpointFileError("not an ultralytics model file (no model in it)")
    version = root.get("version")
    version = version[:40] if isinstance(version, str) else ""
    tensors: dict[str, PickledTensor] = {}
    top = _layer(model, "", tensors, 0)
    sequence = top.children.get("model")
    if sequence is None or not sequence.children:
        raise CheckpointFileError("not an ultralytics model file (its model has no layers)")
    layers = tuple(sequence.children[str(i)] for i in range(len(sequence.children)) if str(i) in sequence.children)
    if len(layers) != len(sequence.children) or len(layers) > MAX_LAYERS:
        raise CheckpointFileError("the model's layers are not numbered 0, 1, 2 …")
    checked = checked_tensors(tensors, storages)
    if not checked:
        raise CheckpointFileError("the model holds no tensors")
    model_kind = model.kind.rpartition(".")[2]
    task = TASKS.get(model_kind, "")
    reason = "" if task else f"an ultralytics {model_kind}: Easel runs detection and segmentation models (YOLOv8)"
    if not reason:
        others = sorted({k for layer in layers for k in _kinds(layer)} - RUN_MODULES)
        if others:
            reason = f"its layers include {', '.join(others[:4])} (a newer YOLO than v8): Easel runs YOLOv8's"
    return DetectorFile(task, _classes(model.state.get("names")), layers, checked, prefix, version, reason)


def serves(detector: DetectorFile, file_name: str) -> str:
    """faces | hands | persons | "" — what the detail pass may use it for: by its class names, else
    its file name (ADetailer's are named for what they find)."""
    words = " ".join(detector.classes).lower() if detector.classes else ""
    words = words if any(w in words for w in ("face", "hand", "person")) else file_name.lower()
    for word, target in (("face", "faces"), ("hand", "hands"), ("person", "persons")):
        if word in words:
            return target
    return ""


def _layer(record: object, prefix: str, tensors: dict[str, PickledTensor], depth: int) -> Layer:
    where = prefix.rstrip(".") or "the model"
    if depth > 12:
        raise CheckpointFileError(f"{where}: modules nested deeper than a YOLO model's")
    if not isinstance(record, Opaque) or not isinstance(record.state, dict) or not record.kind:
        raise CheckpointFileError(f"{where} is not a module")
    state = record.state
    own = []
    for group in ("_parameters", "_buffers"):
        values = state.get(group) or {}
        if not isinstance(values, dict):
            raise CheckpointFileError(f"{where}: its {group[1:]} are not a dict")
        for name, tensor in values.items():
            if tensor is None:
                continue
            if not isinstance(name, str) or not isinstance(tensor, PickledTensor):
                raise CheckpointFileError(f"{where}: {str(name)[:40]!r} is not a tensor")
            tensors[f"{prefix}{name}"] = tensor
            own.append(name)
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise CheckpointFileError(f"{where}: its modules are not a dict")
    children = {
        str(name): _layer(child, f"{prefix}{name}.", tensors, depth + 1) for name, child in modules.items() if child is not None
    }
    settings = {k: v for k, v in state.items() if isinstance(k, str) and not k.startswith("_") and _plain(v)}
    return Layer(record.kind.rpartition(".")[2], settings, tuple(own), children)


def _plain(value: object) -> bool:
    if isinstance(value, bool | int | float | type(None)):
        return True
    if isinstance(value, str):
        return len(value) <= 200
    return isinstance(value, tuple | list) and len(value) <= 8 and all(isinstance(v, int | float) for v in value)


def _kinds(layer: Layer) -> set[str]:
    found = {layer.kind}
    for child in layer.children.values():
        found |= _kinds(child)
    return found


def _classes(names: object) -> tuple[str, ...]:
    if isinstance(names, dict):
        keys = [k for k in names if isinstance(k, int) and not isinstance(k, bool)]
        if len(keys) != len(names) or sorted(keys) != list(range(len(keys))):
            return ()
        values = [names[i] for i in range(len(keys))]
    elif isinstance(names, list | tuple):
        values = list(names)
    else:
        return ()
    if len(values) > MAX_CLASSES or not all(isinstance(v, str) for v in values):
        return ()
    return tuple(v[:60] for v in values)
