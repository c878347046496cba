"""ADetailer's detectors (YOLOv8 detection and segmentation models: face_yolov8n.pt, hand_yolov8n.pt,
person_yolov8n-seg.pt, …) run as ultralytics runs them, by a network of our own built from what the
file records (common/detector_file.py: each layer's class, settings and inputs).

Facts followed (ultralytics 8.x, as ADetailer calls it: `model(picture, conf=confidence)`): the
picture letterboxed to 640 on its long side (scaled up too, padded with grey 114 to a multiple of 32),
RGB in [0, 1]; layers run in order, each reading the layer(s) its `f` names; the Detect head's box
branch gives, per side, a distribution over `reg_max` bins whose expectation (DFL) is the distance from
the anchor (a cell's centre) in strides; class scores are sigmoids; non-maximum suppression per class
at IoU 0.7, at most 300 boxes; boxes mapped back through the letterbox. A segmentation model's mask is
its prototypes weighted by each box's coefficients, cut to the box, upsampled to the letterboxed
picture, positive logits kept; Easel then drops the padding before sizing it to the picture (ADetailer
stretches the padded mask).

The network runs in float32 on the worker's device: it is small (YOLOv8n is 3 M parameters).
"""

from __future__ import annotations

import math
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.detector_file import DetectorFile, Layer, read_detector
from common.errors import CheckpointFileError
from common.pickle_reader import StorageReader, by_storage
from gpu_worker.model_parts import PartError, load_exact

SIZE = 640
STRIDE = 32
PAD_GREY = 114
IOU = 0.7
MAX_DETECTIONS = 300
RESIDENT = 2  # detectors kept in CPU RAM between batches
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64}


class DetectorError(Exception):
    """A detector file that cannot be run: the message names it, for the person."""


@dataclass(frozen=True)
class Found:
    """One thing found: its box in the picture (left, top, right, bottom), its score, and for a
    segmentation model its mask (L, the picture's size)."""

    box: tuple[int, int, int, int]
    score: float
    mask: Image.Image | None = None


# --- the layers -----------------------------------------------------------------------------------


class _Conv(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module | None, act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        if bn is not None:  # a fused model has none
            self.bn = bn
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(self.bn(x) if hasattr(self, "bn") else x)


class _Bottleneck(nn.Module):
    def __init__(self, cv1: nn.Module, cv2: nn.Module, add: bool) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = cv1, cv2, add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class _C2f(nn.Module):
    def __init__(self, cv1: nn.Module, cv2: nn.Module, m: nn.ModuleList) -> None:
        super().__init__()
        self.cv1, self.cv2, self.m = cv1, cv2, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class _SPPF(nn.Module):
    def __init__(self, cv1: nn.Module, cv2: nn.Module, m: nn.Module) -> None:
        super().__init__()
        self.cv1, self.cv2, self.m = cv1, cv2, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class _Concat(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.dim)


class _DFL(nn.Module):
    def __init__(self, conv: nn.Module, bins: int) -> None:
        super().__init__()
        self.conv, self.bins = conv, bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class _Proto(nn.Module):
    def __init__(self, cv1: nn.Module, upsample: nn.Module, cv2: nn.Module, cv3: nn.Module) -> None:
        super().__init__()
        self.cv1, self.upsample, self.cv2, self.cv3 = cv1, upsample, cv2, cv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class _Detect(nn.Module):
    """Boxes (x1, y1, x2, y2 in the input's pixels) and class scores for every anchor of every level;
    a Segment head adds each anchor's mask coefficients and the prototypes."""

    def __init__(self, cv2: nn.ModuleList, cv3: nn.ModuleList, dfl: _DFL, classes: int, cv4: nn.ModuleList | None = None, proto: nn.Module | None = None) -> None:  # fmt: skip
        super().__init__()
        self.cv2, self.cv3, self.dfl, self.classes = cv2, cv3, dfl, classes
        if cv4 is not None and proto is not None:
            self.cv4, self.proto = cv4, proto

    def forward(self, feats: list[torch.Tensor], height: int) -> tuple[torch.Tensor, ...]:
        b = feats[0].shape[0]
        levels = [torch.cat((self.cv2[i](f), self.cv3[i](f)), 1) for i, f in enumerate(feats)]
        anchors, strides = [], []
        for f in feats:
            h, w = f.shape[-2:]
            stride = height / h
            sy, sx = torch.meshgrid(
                torch.arange(h, device=f.device, dtype=f.dtype) + 0.5,
                torch.arange(w, device=f.device, dtype=f.dtype) + 0.5,
                indexing="ij",
            )
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), stride, device=f.device, dtype=f.dtype))
        points, scale = torch.cat(anchors).T.unsqueeze(0), torch.cat(strides).T.unsqueeze(0)
        flat = torch.cat([level.view(b, level.shape[1], -1) for level in levels], 2)
        box, scores = flat.split((self.dfl.bins * 4, self.classes), 1)
        left_top, right_bottom = self.dfl(box).chunk(2, 1)
        boxes = torch.cat((points - left_top, points + right_bottom), 1) * scale
        if not hasattr(self, "proto"):
            return boxes, scores.sigmoid()
        coefficients = torch.cat([self.cv4[i](f).view(b, -1, f.shape[-2] * f.shape[-1]) for i, f in enumerate(feats)], 2)
        return boxes, scores.sigmoid(), coefficients, self.proto(feats[0])


class YoloNetwork(nn.Module):
    def __init__(self, layers: list[nn.Module], sources: list[int | list[int]]) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)
        self.sources = sources

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height = x.shape[-2]
        outputs: list[object] = []
        value: object = x
        for module, source in zip(self.model, self.sources, strict=True):
            if source != -1:
                value = outputs[source] if isinstance(source, int) else [value if j == -1 else outputs[j] for j in source]
            value = module(value, height) if isinstance(module, _Detect) else module(value)
            outputs.append(value)
        assert isinstance(value, tuple)
        return value


# --- built from the file's record -----------------------------------------------------------------


def _ints(layer: Layer, key: str, low: int, high: int) -> tuple[int, ...]:
    value = layer.settings.get(key)
    values = (value,) if isinstance(value, int) else value
    if not isinstance(values, tuple | list) or not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
    ):
        raise DetectorError(f"its {layer.kind} has a {key} of {value!r}, outside what a YOLO layer has")
    return tuple(values)


def _child(layer: Layer, name: str) -> nn.Module:
    if name not in layer.children:
        raise DetectorError(f"its {layer.kind} has no {name}")
    return build(layer.children[name])


def _numbered(layer: Layer) -> list[nn.Module]:
    names = [str(i) for i in range(len(layer.children))]
    if list(layer.children) != names:
        raise DetectorError(f"its {layer.kind}'s modules are not numbered 0, 1, 2 …")
    return [build(layer.children[name]) for name in names]


def build(layer: Layer) -> nn.Module:
    """Our module for one recorded layer (on the device in effect: the meta device while loading)."""
    kind, s = layer.kind, layer.settings
    if kind in ("Conv2d", "ConvTranspose2d"):
        if s.get("padding_mode", "zeros") != "zeros" or s.get("transposed", kind == "ConvTranspose2d") != (kind == "ConvTranspose2d"):
            raise DetectorError(f"its {kind} pads in a way YOLO's do not")
        channels_in, channels_out = _ints(layer, "in_channels", 1, 4096)[0], _ints(layer, "out_channels", 1, 4096)[0]
        groups = _ints(layer, "groups", 1, 4096)[0]
        if channels_in % groups or channels_out % groups:
            raise DetectorError(f"its {kind}'s channels do not divide into its groups")
        shape = dict(
            kernel_size=_ints(layer, "kernel_size", 1, 15), stride=_ints(layer, "stride", 1, 8),
            padding=_ints(layer, "padding", 0, 15), dilation=_ints(layer, "dilation", 1, 8), groups=groups,
            bias="bias" in layer.tensors,
        )  # fmt: skip
        if kind == "Conv2d":
            return nn.Conv2d(channels_in, channels_out, **shape)
        return nn.ConvTranspose2d(channels_in, channels_out, output_padding=_ints(layer, "output_padding", 0, 8), **shape)
    if kind == "BatchNorm2d":
        eps = s.get("eps", 1e-5)
        if not isinstance(eps, float) or not 0 < eps < 1:
            raise DetectorError("its BatchNorm2d has no usable eps")
        return nn.BatchNorm2d(_ints(layer, "num_features", 1, 4096)[0], eps=eps)
    if kind == "SiLU":
        return nn.SiLU()
    if kind == "Identity":
        return nn.Identity()
    if kind == "MaxPool2d":
        k = _ints(layer, "kernel_size", 1, 15)
        return nn.MaxPool2d(k, _ints(layer, "stride", 1, 8), _ints(layer, "padding", 0, 7))
    if kind == "Upsample":
        factor = s.get("scale_factor")
        if s.get("mode") != "nearest" or not isinstance(factor, int | float) or factor not in (2, 2.0):
            raise DetectorError("its Upsample is not YOLO's nearest ×2")
        return nn.Upsample(scale_factor=2.0, mode="nearest")
    if kind in ("Sequential", "ModuleList"):
        parts = _numbered(layer)
        return nn.Sequential(*parts) if kind == "Sequential" else nn.ModuleList(parts)
    if kind in ("Conv", "DWConv"):
        return _Conv(_child(layer, "conv"), build(layer.children["bn"]) if "bn" in layer.children else None, _child(layer, "act"))
    if kind == "Bottleneck":
        return _Bottleneck(_child(layer, "cv1"), _child(layer, "cv2"), s.get("add") is True)
    if kind == "C2f":
        m = _child(layer, "m")
        assert isinstance(m, nn.ModuleList)
        return _C2f(_child(layer, "cv1"), _child(layer, "cv2"), m)
    if kind == "SPPF":
        return _SPPF(_child(layer, "cv1"), _child(layer, "cv2"), _child(layer, "m"))
    if kind == "Concat":
        return _Concat(_ints(layer, "d", 1, 1)[0])
    if kind == "DFL":
        return _DFL(_child(layer, "conv"), _ints(layer, "c1", 2, 64)[0])
    if kind == "Proto":
        return _Proto(*(_child(layer, name) for name in ("cv1", "upsample", "cv2", "cv3")))
    if kind in ("Detect", "Segment"):
        dfl = _child(layer, "dfl")
        assert isinstance(dfl, _DFL)
        head = [_child(layer, name) for name in ("cv2", "cv3")]
        classes = _ints(layer, "nc", 1, 1000)[0]
        if kind == "Detect":
            return _Detect(*head, dfl, classes)  # type: ignore[arg-type]
        return _Detect(*head, dfl, classes, _child(layer, "cv4"), _child(layer, "proto"))  # type: ignore[arg-type]
    raise DetectorError(f"it has a {kind} layer, which Easel does not run")


def _sources(detector: DetectorFile) -> list[int | list[int]]:
    sources: list[int | list[int]] = []
    for i, layer in enumerate(detector.layers):
        source = layer.settings.get("f", -1)
        wanted = [source] if isinstance(source, int) else source
        if not isinstance(wanted, list | tuple) or not wanted or not all(
            isinstance(j, int) and not isinstance(j, bool) and (j == -1 or 0 <= j < i) for j in wanted
        ):
            raise DetectorError(f"its layer {i} reads from {source!r}, which is not an earlier layer")
        sources.append(source if isinstance(source, int) else list(wanted))
    if detector.layers[-1].kind not in ("Detect", "Segment"):
        raise DetectorError("its last layer is not a Detect or Segment head")
    return sources


def load_detector(path: Path, name: str) -> tuple[YoloNetwork, DetectorFile]:
    """The network in `path`, in float32 on the CPU; DetectorError naming what is wrong."""
    if not path.is_file():
        raise DetectorError(f"the detector {name} is no longer on disk")
    try:
        detector = read_detector(path)
    except CheckpointFileError as e:
        raise DetectorError(f"the detector {name} cannot be read: {e}") from None
    if detector.reason:
        raise DetectorError(f"the detector {name} cannot be run: {detector.reason}")
    try:
        with torch.device("meta"):
            network = YoloNetwork([build(layer) for layer in detector.layers], _sources(detector))
        state = {}
        with zipfile.ZipFile(path) as archive:
            reader = StorageReader(archive, detector.prefix)
            for tensor in by_storage(detector.tensors):
                dtype = _DTYPES.get(tensor.dtype)
                if dtype is None:
                    raise DetectorError(f"its tensor {tensor.name} is {tensor.dtype}, which YOLO models are not")
                raw = bytearray(reader.tensor_bytes(tensor))
                value = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype, device="cpu")
                state[tensor.name] = value.reshape(tensor.shape).float() if dtype.is_floating_point else value.reshape(tensor.shape)
        load_exact(network, state, f"the detector {name}")
    except DetectorError as e:
        raise DetectorError(f"the detector {name} cannot be run: {e}") from None
    except (PartError, CheckpointFileError, RuntimeError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise DetectorError(f"the detector {name} cannot be run ({type(e).__name__}: {str(e)[:160]})") from None
    return network.eval(), detector


# --- running it -----------------------------------------------------------------------------------


def letterbox(picture: Image.Image) -> tuple[np.ndarray, float, tuple[int, int]]:
    """ultralytics' LetterBox(640, auto=True, stride=32): the picture scaled to 640 on its long side,
    padded with grey to a multiple of 32 on the other, the padding split evenly; its scale and padding."""
    width, height = picture.size
    ratio = min(SIZE / height, SIZE / width)
    new_w, new_h = round(width * ratio), round(height * ratio)
    pad_w, pad_h = (SIZE - new_w) % STRIDE / 2, (SIZE - new_h) % STRIDE / 2
    rgb = np.asarray(picture.convert("RGB"))
    if (new_w, new_h) != (width, height):
        import cv2  # OpenCV, as ultralytics resizes (bilinear)

        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    padded = np.pad(rgb, ((top, bottom), (left, right), (0, 0)), constant_values=PAD_GREY)
    return padded, ratio, (left, top)


def _iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    left_top = torch.maximum(box[:2], others[:, :2])
    right_bottom = torch.minimum(box[2:], others[:, 2:])
    inter = (right_bottom - left_top).clamp(min=0).prod(1)
    area = (box[2:] - box[:2]).prod()
    areas = (others[:, 2:] - others[:, :2]).prod(1)
    return inter / (area + areas - inter + 1e-9)


def suppress(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Greedy non-maximum suppression per class (a class's boxes never suppress another's)."""
    offset = boxes + labels[:, None].to(boxes.dtype) * (SIZE * 8)  # ultralytics' per-class offset (max_wh)
    order = scores.argsort(descending=True)
    keep: list[int] = []
    while order.numel() and len(keep) < MAX_DETECTIONS:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[_iou(offset[best], offset[rest]) <= IOU]
    return keep


@torch.inference_mode()
def detect(network: YoloNetwork, picture: Image.Image, confidence: float, device: torch.device | str) -> list[Found]:
    """What the network finds in `picture` at `confidence` or more, best first."""
    padded, ratio, (left, top) = letterbox(picture)
    x = torch.from_numpy(np.ascontiguousarray(padded)).to(device=device, dtype=torch.float32)
    x = x.permute(2, 0, 1).unsqueeze(0) / 255.0
    outputs = network(x)
    boxes, scores = outputs[0][0].T, outputs[1][0].T  # (anchors, 4), (anchors, classes)
    best, labels = scores.max(1)
    chosen = (best >= confidence).nonzero().flatten()
    if not chosen.numel():
        return []
    kept = chosen[suppress(boxes[chosen], best[chosen], labels[chosen])]
    masks = _masks(outputs, kept, boxes[kept], padded.shape[:2]) if len(outputs) == 4 else None
    found = []
    width, height = picture.size
    for n, index in enumerate(kept.tolist()):
        x1, y1, x2, y2 = ((boxes[index] - torch.tensor([left, top, left, top], device=boxes.device)) / ratio).tolist()
        box = (
            max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2))
        )  # fmt: skip
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        mask = None
        if masks is not None:
            cut = masks[n][top : top + round(height * ratio), left : left + round(width * ratio)]
            mask = Image.fromarray(cut.astype(np.uint8) * 255, "L").resize(picture.size, Image.Resampling.BILINEAR)
        found.append(Found(box, float(best[index]), mask))
    return found


def _masks(outputs: tuple[torch.Tensor, ...], kept: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """ultralytics' process_mask(upsample=True): each kept box's mask over the letterboxed picture."""
    coefficients, prototypes = outputs[2][0].T[kept], outputs[3][0]  # (n, masks), (masks, h, w)
    channels, mh, mw = prototypes.shape
    logits = (coefficients @ prototypes.view(channels, -1)).view(-1, mh, mw)
    height, width = size
    scaled = boxes * torch.tensor([mw / width, mh / height, mw / width, mh / height], device=boxes.device)
    rows = torch.arange(mh, device=boxes.device, dtype=boxes.dtype)[None, :, None]
    cols = torch.arange(mw, device=boxes.device, dtype=boxes.dtype)[None, None, :]
    x1, y1, x2, y2 = (scaled[:, i, None, None] for i in range(4))
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    logits = logits * inside
    full = nn.functional.interpolate(logits[None], size, mode="bilinear", align_corners=False)[0]
    return (full > 0).cpu().numpy()


class DetectorCache:
    """The last few detectors read, kept in CPU RAM (they are a few MB); moved to the device to run."""

    def __init__(self, size: int = RESIDENT) -> None:
        self.size = size
        self._networks: OrderedDict[str, YoloNetwork] = OrderedDict()

    def get(self, path: str, sha256: str, name: str) -> YoloNetwork:
        key = sha256 or path
        if key in self._networks:
            self._networks.move_to_end(key)
            return self._networks[key]
        network, _ = load_detector(Path(path), name)
        self._networks[key] = network
        while len(self._networks) > self.size:
            self._networks.popitem(last=False)
        return network
