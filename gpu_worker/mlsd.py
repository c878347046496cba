"""The `mlsd` preprocessor's network: M-LSD large (`mlsd_large_512_fp32.pth`, navervision's
MobileV2_MLSD_Large as the A1111 extension runs it), written from the file's layout.

Facts followed (mlsd's models/mbv2_mlsd_large.py and utils.py): a MobileNetV2 cut after its 96-channel
stage, fed the picture in [-1, 1] with a fourth channel of ones, TFLite's padding on its strided
convolutions (one pixel right and below, none before); its features at 1/2, 1/4, 1/8 and 1/16 fused
from the coarsest up; of the sixteen maps out, the last nine: a line centre's score and, at each
centre, the displacements to its two ends (at half the picture's size). Centres are the 200 best local
maxima (5×5); a line is kept when its score passes the value threshold and its length the distance
threshold (the extension's sliders, 0.1 and 0.1), and drawn white, one pixel wide, on black.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

# MobileNetV2's stages as M-LSD keeps them: (expansion, channels, blocks, stride).
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
TAPS = (1, 3, 6, 10, 13)  # the features read: 1/2, 1/4, 1/8, 1/16, 1/16
TOP_K = 200


class _ConvBNReLU(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = 0 if stride == 2 else (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(channels_in, channels_out, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU6(),
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:  # TFLite's padding
            x = nn.functional.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class _InvertedResidual(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = round(channels_in * expansion)
        self.residual = stride == 1 and channels_in == channels_out
        layers: list[nn.Module] = [_ConvBNReLU(channels_in, hidden, 1)] if expansion != 1 else []
        layers += [
            _ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        features: list[nn.Module] = [_ConvBNReLU(4, 32, stride=2)]
        channels = 32
        for expansion, width, blocks, stride in STAGES:
            for i in range(blocks):
                features.append(_InvertedResidual(channels, width, stride if i == 0 else 1, expansion))
                channels = width
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, feature in enumerate(self.features):
            x = feature(x)
            if i in TAPS:
                out.append(x)
        return out


def _conv_bn_relu(channels_in: int, channels_out: int, kernel: int, padding: int = 0, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel, padding=padding, dilation=dilation), nn.BatchNorm2d(channels_out), nn.ReLU()
    )


class _BlockA(nn.Module):
    """The finer feature and the coarser (doubled, unless equal in size) side by side, each 1×1 to 64."""

    def __init__(self, fine: int, coarse: int, upscale: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(coarse, 64, 1)
        self.conv2 = _conv_bn_relu(fine, 64, 1)
        self.upscale = upscale

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        coarse = self.conv1(coarse)
        if self.upscale:
            coarse = nn.functional.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(fine), coarse), dim=1)


class _BlockB(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels_in, channels_in, 3, padding=1)
        self.conv2 = _conv_bn_relu(channels_in, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class _BlockC(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels_in, channels_in, 3, padding=5, dilation=5)
        self.conv2 = _conv_bn_relu(channels_in, channels_in, 3, padding=1)
        self.conv3 = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MlsdLarge(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.block15, self.block16 = _BlockA(64, 96, upscale=False), _BlockB(128, 64)
        self.block17, self.block18 = _BlockA(32, 64), _BlockB(128, 64)
        self.block19, self.block20 = _BlockA(24, 64), _BlockB(128, 64)
        self.block21, self.block22 = _BlockA(16, 64), _BlockB(128, 64)
        self.block23 = _BlockC(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:]


def lines_from(maps: torch.Tensor, score_threshold: float, distance_threshold: float) -> np.ndarray:
    """mlsd's deccode_output_score_and_ptss and pred_lines: (x1, y1, x2, y2) per line, at the maps' size."""
    width = maps.shape[3]
    heat = torch.sigmoid(maps[0, 0])
    peaks = nn.functional.max_pool2d(heat[None, None], 5, stride=1, padding=2)[0, 0]
    heat = (heat * (peaks == heat)).reshape(-1)
    scores, indices = torch.topk(heat, min(TOP_K, heat.numel()))
    ys, xs = (indices // width).cpu().numpy(), (indices % width).cpu().numpy()
    ends = maps[0, 1:5].permute(1, 2, 0).cpu().numpy()  # (y, x, [dx1, dy1, dx2, dy2])
    lengths = np.sqrt(((ends[:, :, :2] - ends[:, :, 2:]) ** 2).sum(-1))
    lines = [
        (x + ends[y, x, 0], y + ends[y, x, 1], x + ends[y, x, 2], y + ends[y, x, 3])
        for y, x, score in zip(ys, xs, scores.cpu().numpy(), strict=True)
        if score > score_threshold and lengths[y, x] > distance_threshold
    ]
    return np.array(lines, dtype=np.float64).reshape(-1, 4)


@torch.inference_mode()
def mlsd_map(
    network: MlsdLarge, rgb: np.ndarray, device: torch.device | str, score_threshold: float = 0.1, distance_threshold: float = 0.1
) -> np.ndarray:
    """The extension's map: the lines found, white, one pixel wide, on black (H×W uint8)."""
    height, width = rgb.shape[:2]
    picture = np.concatenate([rgb.astype(np.float32), np.full((height, width, 1), 1.0, np.float32)], axis=-1)
    x = torch.from_numpy(picture.transpose(2, 0, 1)[None] / 127.5 - 1.0).to(device=device, dtype=torch.float32)
    network.to(device)
    try:
        maps = network(x)
    finally:
        network.to("cpu")
    out = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in 2 * lines_from(maps, score_threshold, distance_threshold):  # the maps are at half size
        cv2.line(out, (int(x1), int(y1)), (int(x2), int(y2)), 255, 1)
    return out
