"""The `softedge_pidinet`, `softedge_pidisafe` and `scribble_pidinet` preprocessors' network: PiDiNet
(Pixel Difference Networks, `table5_pidinet.pth`), written from its file's layout (hellozhuo/pidinet's
"carv4" model with dilation 24 and spatial attention, as the A1111 extension builds it), its width
read from the file.

Facts followed (pidinet's models/pidinet.py and ops.py): sixteen layers of pixel-difference
convolutions — central (cd: the kernel's sum taken at the centre), angular (ad: each weight less its
clockwise neighbour's), radial (rd: a 3×3 kernel spread over a 5×5 ring, outer plus, inner minus) and
plain (cv), in that order four times — as depthwise 3×3 (or 5×5) convolutions with 1×1 projections and
residuals, four stages widening 1×, 2×, 4×, 4× (max-pooled in); each stage's output through a dilated
module (1×1 to 24, four dilated 3×3 convolutions summed), a spatial attention and a 1×1 to one channel,
brought to the picture's size; a 1×1 over the four gives the edge, its sigmoid the map.
The extension gives it the picture in BGR, scaled to [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LAYERS = ("cd", "ad", "rd", "cv") * 4  # "carv4": the init block's, then each block's
DILATION_WIDTH = 24
_CLOCKWISE = [3, 0, 1, 6, 4, 2, 7, 8, 5]  # each 3×3 position's clockwise neighbour, as ops.py takes it
_RING_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]
_RING_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def difference_conv(kind: str, x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    """One pixel-difference convolution (ops.py's createConvFunc), 3×3 weights as the file stores them."""
    if kind == "cv":
        return nn.functional.conv2d(x, weight, None, stride, 1, 1, groups)
    if kind == "cd":
        centre = nn.functional.conv2d(x, weight.sum(dim=(2, 3), keepdim=True), None, stride, 0, 1, groups)
        return nn.functional.conv2d(x, weight, None, stride, 1, 1, groups) - centre
    flat = weight.reshape(weight.shape[0], weight.shape[1], -1)
    if kind == "ad":
        return nn.functional.conv2d(x, (flat - flat[:, :, _CLOCKWISE]).reshape(weight.shape), None, stride, 1, 1, groups)
    ring = torch.zeros(weight.shape[0], weight.shape[1], 25, device=weight.device, dtype=weight.dtype)
    ring[:, :, _RING_OUTER] = flat[:, :, 1:]
    ring[:, :, _RING_INNER] = -flat[:, :, 1:]
    return nn.functional.conv2d(x, ring.reshape(weight.shape[0], weight.shape[1], 5, 5), None, stride, 2, 1, groups)


class _DifferenceConv(nn.Module):
    """A 3×3 kernel applied as its pixel difference (its weight only: the file's `…conv1.weight`)."""

    def __init__(self, kind: str, channels_in: int, channels_out: int, groups: int = 1) -> None:
        super().__init__()
        self.kind, self.groups = kind, groups
        self.weight = nn.Parameter(torch.empty(channels_out, channels_in // groups, 3, 3, device=torch.get_default_device()))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Conv2d starts (the file's replace it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return difference_conv(self.kind, x, self.weight, groups=self.groups)


class _Block(nn.Module):
    def __init__(self, kind: str, channels_in: int, channels_out: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1)
        self.conv1 = _DifferenceConv(kind, channels_in, channels_in, groups=channels_in)
        self.conv2 = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = nn.functional.max_pool2d(x, 2, 2)
        y = self.conv2(nn.functional.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class _Dilations(nn.Module):
    """CDCM: 1×1 to the dilation width, four dilated 3×3 convolutions (5, 7, 9, 11) summed."""

    def __init__(self, channels_in: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, width, 1)
        for i, rate in enumerate((5, 7, 9, 11), start=1):
            self.add_module(f"conv2_{i}", nn.Conv2d(width, width, 3, padding=rate, dilation=rate, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(nn.functional.relu(x))
        return sum(getattr(self, f"conv2_{i}")(x) for i in range(1, 5))  # type: ignore[return-value]


class _Attention(nn.Module):
    """CSAM: a one-channel mask from a 1×1 to four and a 3×3, multiplying its input."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(nn.functional.relu(x))))


class _Reduce(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    """PiDiNet(60, carv4, dil=24, sa=True): the released table5_pidinet.pth is 60 channels wide."""

    def __init__(self, width: int = 60, dilation_width: int = DILATION_WIDTH) -> None:
        super().__init__()
        self.init_block = _DifferenceConv(LAYERS[0], 3, width)  # layer 0; stage 1 then has three blocks
        widths = (width, width * 2, width * 4, width * 4)
        layer, channels_in = 1, width
        for stage, stage_width in enumerate(widths, start=1):
            for i in range(1, 4 if stage == 1 else 5):
                stride = 2 if i == 1 and stage > 1 else 1
                self.add_module(f"block{stage}_{i}", _Block(LAYERS[layer], channels_in, stage_width, stride))
                layer, channels_in = layer + 1, stage_width
        self.dilations = nn.ModuleList(_Dilations(w, dilation_width) for w in widths)
        self.attentions = nn.ModuleList(_Attention(dilation_width) for _ in widths)
        self.conv_reduces = nn.ModuleList(_Reduce(dilation_width) for _ in widths)
        self.classifier = nn.Conv2d(4, 1, 1)

    @classmethod
    def for_state(cls, shapes: dict[str, tuple[int, ...]]) -> PiDiNet:
        return cls(shapes["init_block.weight"][0], shapes["dilations.0.conv1.weight"][0])

    def forward(self, bgr01: torch.Tensor) -> torch.Tensor:
        height, width = bgr01.shape[2:]
        x = self.init_block(bgr01)
        edges = []
        for stage in range(1, 5):
            for i in range(1, 4 if stage == 1 else 5):
                x = getattr(self, f"block{stage}_{i}")(x)
            e = self.conv_reduces[stage - 1](self.attentions[stage - 1](self.dilations[stage - 1](x)))
            edges.append(nn.functional.interpolate(e, (height, width), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(edges, dim=1)))


@torch.inference_mode()
def pidinet_map(network: PiDiNet, rgb: np.ndarray, device: torch.device | str, safe: bool) -> np.ndarray:
    """The extension's map: BGR in [0, 1]; the fused edge, as it is or (pidisafe) in its safe steps."""
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).to(device=device, dtype=torch.float32)
    network.to(device)
    try:
        edge = network(bgr.permute(2, 0, 1)[None] / 255.0)[0, 0].cpu().numpy()
    finally:
        network.to("cpu")
    if safe:  # the extension's safe_step: three levels
        edge = (edge.astype(np.float32) * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return (edge * 255.0).clip(0, 255).astype(np.uint8)
