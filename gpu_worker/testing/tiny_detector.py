"""A tiny ADetailer detector file in its real layout (`face_yolov8n.pt`, `person_yolov8n-seg.pt`), for
tests: what ultralytics' trainer saves — a dict whose `model` is the pickled DetectionModel (or
SegmentationModel) object, half precision, its layers the YOLOv8 ones (Conv, C2f, SPPF, Upsample,
Concat, Detect / Segment) — written without ultralytics: stand-in classes of our own, pickled under
ultralytics' names.

Its weights are set, not random, so that a test knows what it must find: every convolution passes its
first input channel on at its centre tap (the first, the mean of red, green and blue), so each cell of
the coarsest level (stride 32) sees the one pixel of the letterboxed picture at its top-left corner, a
near-white one growing layer by layer and any other fading. Only that level scores, high where its pixel is bright; its box reaches one cell around
the cell's centre (`expected_box`); a segmentation model's mask is the bright cells inside the box.
A small white spot that covers one such pixel is one box; a picture without white, none.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

_GAIN = 1.5  # past 0.46 a value grows by about this much a layer; below it, it fades
_WIDTHS = (8, 16, 16, 32, 32)  # P1..P5: YOLOv8n's 16, 32, 64, 128, 256, smaller
REG_MAX = 16
BOX_CELLS = 1  # each box reaches this many cells of its level from its anchor, on every side


class _Conv(nn.Module):
    default_act = nn.SiLU()

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03)
        self.act = self.default_act


class _Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = _Conv(c, c, 3)
        self.cv2 = _Conv(c, c, 3)
        self.add = shortcut


class _C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = _Conv(c1, 2 * self.c, 1)
        self.cv2 = _Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(_Bottleneck(self.c, shortcut) for _ in range(n))


class _SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c = c1 // 2
        self.cv1 = _Conv(c1, c, 1)
        self.cv2 = _Conv(c * 4, c2, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.d = 1


class _DFL(nn.Module):
    def __init__(self, c1: int = REG_MAX) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float32).view(1, c1, 1, 1)
        self.c1 = c1


class _Proto(nn.Module):
    def __init__(self, c1: int, c: int, c2: int) -> None:
        super().__init__()
        self.cv1 = _Conv(c1, c, 3)
        self.upsample = nn.ConvTranspose2d(c, c, 2, 2, 0, bias=True)
        self.cv2 = _Conv(c, c, 3)
        self.cv3 = _Conv(c, c2, 1)


class _Detect(nn.Module):
    def __init__(self, nc: int, ch: tuple[int, ...]) -> None:
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), REG_MAX
        self.no = nc + REG_MAX * 4
        self.dynamic, self.export, self.format = False, False, None
        c2, c3 = max(16, ch[0] // 4, REG_MAX * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(_Conv(x, c2, 3), _Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(_Conv(x, c3, 3), _Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = _DFL(REG_MAX)
        self.stride = torch.tensor([8.0, 16.0, 32.0])


class _Segment(_Detect):
    def __init__(self, nc: int, ch: tuple[int, ...], nm: int = 8, npr: int = 16) -> None:
        super().__init__(nc, ch)
        self.nm, self.npr = nm, npr
        self.proto = _Proto(ch[0], npr, nm)
        c4 = max(ch[0] // 4, nm)
        self.cv4 = nn.ModuleList(nn.Sequential(_Conv(x, c4, 3), _Conv(c4, c4, 3), nn.Conv2d(c4, nm, 1)) for x in ch)


class _DetectionModel(nn.Module):
    def __init__(self, layers: list[nn.Module], names: dict[int, str]) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)
        self.yaml = {"nc": len(names), "scales": {"n": [0.33, 0.25, 1024]}, "backbone": [], "head": []}
        self.save = sorted({j for m in layers for j in ([m.f] if isinstance(m.f, int) else m.f) if j != -1})
        self.names = names
        self.inplace = True
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.task = "detect"


class _SegmentationModel(_DetectionModel):
    pass


# Our stand-ins, pickled under the names ultralytics' own classes have.
NAMES: dict[type, tuple[str, str]] = {
    _Conv: ("ultralytics.nn.modules.conv", "Conv"),
    _Concat: ("ultralytics.nn.modules.conv", "Concat"),
    _Bottleneck: ("ultralytics.nn.modules.block", "Bottleneck"),
    _C2f: ("ultralytics.nn.modules.block", "C2f"),
    _SPPF: ("ultralytics.nn.modules.block", "SPPF"),
    _DFL: ("ultralytics.nn.modules.block", "DFL"),
    _Proto: ("ultralytics.nn.modules.block", "Proto"),
    _Detect: ("ultralytics.nn.modules.head", "Detect"),
    _Segment: ("ultralytics.nn.modules.head", "Segment"),
    _DetectionModel: ("ultralytics.nn.tasks", "DetectionModel"),
    _SegmentationModel: ("ultralytics.nn.tasks", "SegmentationModel"),
}


class _Pickler(pickle._Pickler):  # the Python pickler: its save_global can be told other names
    names: Mapping[type, tuple[str, str]] = NAMES

    def save_global(self, obj: object, name: str | None = None) -> None:
        named = self.names.get(obj) if isinstance(obj, type) else None
        if named is None:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + f"{named[0]}\n{named[1]}\n".encode())
        self.memoize(obj)


def save_pickled(checkpoint: dict[str, object], out: Path, names: Mapping[type, tuple[str, str]] = NAMES) -> Path:
    """`checkpoint` as torch.save writes it, each stand-in class under the name `names` gives it."""
    pickler = type("Pickler", (_Pickler,), {"names": names})
    module = SimpleNamespace(Pickler=pickler, Unpickler=pickle.Unpickler, __name__="pickle")
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer, pickle_module=module)
    out.write_bytes(buffer.getvalue())
    return out


def detection_model(classes: tuple[str, ...], segment: bool = False) -> nn.Module:
    """The tiny YOLOv8 model (or its segmentation twin) as ultralytics' DetectionModel holds it."""
    names = dict(enumerate(classes))
    model = (_SegmentationModel if segment else _DetectionModel)(_layers(len(names), segment), names)
    model.task = "segment" if segment else "detect"
    return model


def _layers(nc: int, segment: bool) -> list[nn.Module]:
    w1, w2, w3, w4, w5 = _WIDTHS
    spec: list[tuple[object, nn.Module]] = [
        (-1, _Conv(3, w1, 3, 2)),  # 0 P1/2
        (-1, _Conv(w1, w2, 3, 2)),  # 1 P2/4
        (-1, _C2f(w2, w2, 1, True)),  # 2
        (-1, _Conv(w2, w3, 3, 2)),  # 3 P3/8
        (-1, _C2f(w3, w3, 1, True)),  # 4
        (-1, _Conv(w3, w4, 3, 2)),  # 5 P4/16
        (-1, _C2f(w4, w4, 1, True)),  # 6
        (-1, _Conv(w4, w5, 3, 2)),  # 7 P5/32
        (-1, _C2f(w5, w5, 1, True)),  # 8
        (-1, _SPPF(w5, w5, 5)),  # 9
        (-1, nn.Upsample(scale_factor=2.0, mode="nearest")),  # 10
        ([-1, 6], _Concat()),  # 11
        (-1, _C2f(w5 + w4, w4, 1)),  # 12
        (-1, nn.Upsample(scale_factor=2.0, mode="nearest")),  # 13
        ([-1, 4], _Concat()),  # 14
        (-1, _C2f(w4 + w3, w3, 1)),  # 15 (P3/8 out)
        (-1, _Conv(w3, w3, 3, 2)),  # 16
        ([-1, 12], _Concat()),  # 17
        (-1, _C2f(w3 + w4, w4, 1)),  # 18 (P4/16 out)
        (-1, _Conv(w4, w4, 3, 2)),  # 19
        ([-1, 9], _Concat()),  # 20
        (-1, _C2f(w4 + w5, w5, 1)),  # 21 (P5/32 out)
    ]
    head = _Segment(nc, (w3, w4, w5)) if segment else _Detect(nc, (w3, w4, w5))
    spec.append(([15, 18, 21], head))
    layers = []
    for i, (source, module) in enumerate(spec):
        module.f, module.i = source, i  # what ultralytics' parse_model sets on each layer
        module.type = f"{NAMES.get(type(module), (type(module).__module__, type(module).__name__))[0]}"
        layers.append(module)
    return layers


def _set_weights(model: nn.Module, nc: int) -> None:
    """Weights that pass the first channel on (see the module's docstring)."""
    dfl = {id(m.conv) for m in model.modules() if isinstance(m, _DFL)}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
        elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and id(module) not in dfl:
            module.weight.data.zero_()
            k = module.kernel_size[0] // 2
            if isinstance(module, nn.ConvTranspose2d):
                module.weight.data[0, :, :, :] = _GAIN  # (in, out, kh, kw): every output from input 0
            else:
                module.weight.data[:, 0, k, k] = _GAIN
            if module.bias is not None:
                module.bias.data.zero_()
    # The first layer reads the three channels' mean and lets only a near-white pixel (a mean above 0.9:
    # SiLU(1.5 m - 0.65) above 0.46) start where values grow; a drawn picture's colours seldom are.
    first = model.model[0]
    first.conv.weight.data[:, :, 1, 1] = _GAIN / 3
    first.bn.bias.data.fill_(-0.65)
    head = model.model[-1]
    for level in range(head.nl):
        score = head.cv3[level][-1]
        score.weight.data[:, 0] = 1.0 if level == head.nl - 1 else 0.0
        # Only the coarsest level scores: dark gives sigmoid(-5) = 0.007, bright far above any
        # threshold; the finer levels never do, so one bright spot is one box, not a cluster.
        score.bias.data.fill_(-5.0 if level == head.nl - 1 else -1000.0)
        box = head.cv2[level][-1]
        box.weight.data.zero_()
        box.bias.data.fill_(-10.0)
        for side in range(4):
            box.bias.data[side * REG_MAX + BOX_CELLS] = 10.0
        if isinstance(head, _Segment):
            coefficients = head.cv4[level][-1]
            coefficients.weight.data.zero_()
            coefficients.weight.data[0, 0] = 1.0  # the first prototype, which is the bright region


def expected_box(cell: tuple[int, int], ratio: float, pad: tuple[int, int] = (0, 0)) -> tuple[float, float, float, float]:
    """The box the tiny detector gives for a bright pixel at letterboxed (32·column, 32·row), in the
    picture's coordinates (the letterbox's scale and padding undone)."""
    column, row = cell
    left, top = (column + 0.5 - BOX_CELLS) * 32, (row + 0.5 - BOX_CELLS) * 32
    right, bottom = (column + 0.5 + BOX_CELLS) * 32, (row + 0.5 + BOX_CELLS) * 32
    return ((left - pad[0]) / ratio, (top - pad[1]) / ratio, (right - pad[0]) / ratio, (bottom - pad[1]) / ratio)


def make_tiny_detector(out: Path, task: str = "detect", classes: tuple[str, ...] = ("face",), seed: int = 0) -> Path:
    if task not in ("detect", "segment"):
        raise ValueError(f"a detector's task is detect or segment, not {task!r}")
    torch.manual_seed(seed)
    model = detection_model(classes, task == "segment")
    _set_weights(model, len(classes))
    model.half().requires_grad_(False)
    checkpoint = {
        "date": "2023-06-01T00:00:00",
        "version": "8.0.114",
        "epoch": -1,
        "best_fitness": None,
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": {"task": task, "imgsz": 640, "epochs": 1, "model": "yolov8n.pt"},
        "train_metrics": {"metrics/mAP50(B)": 0.5},
    }
    return save_pickled(checkpoint, out)
