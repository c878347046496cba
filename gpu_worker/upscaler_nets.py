"""The ESRGAN-family networks, built from common/upscaler_detection.py's description of a file.

Written here rather than taken from spandrel, the maintained library that A1111 and ComfyUI use:
spandrel imports torchvision when it is imported, and PyPI's torchvision cannot load beside the
CPU build of torch this project pins (its compiled operators need CUDA libraries). The two networks
are small and fixed; they follow xinntao's BasicSR/Real-ESRGAN definitions (RRDBNet, SRVGGNetCompact)
in Real-ESRGAN's tensor names, which `canonical_names` maps every layout onto.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from common.upscaler_detection import UpscalerKind

_SLOPE = 0.2  # leaky ReLU of every RRDB network
_RESIDUAL = 0.2  # the dense blocks' residual scaling (ESRGAN paper, section 3.1)


def _conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, 1, 1)


class DenseBlock(nn.Module):
    """Five convolutions, each seeing the block's input and every earlier output."""

    def __init__(self, filters: int, growth: int) -> None:
        super().__init__()
        self.conv1 = _conv(filters, growth)
        self.conv2 = _conv(filters + growth, growth)
        self.conv3 = _conv(filters + 2 * growth, growth)
        self.conv4 = _conv(filters + 3 * growth, growth)
        self.conv5 = _conv(filters + 4 * growth, filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), _SLOPE))
        return self.conv5(torch.cat(features, 1)) * _RESIDUAL + x


class RRDB(nn.Module):
    def __init__(self, filters: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = DenseBlock(filters, growth)
        self.rdb2 = DenseBlock(filters, growth)
        self.rdb3 = DenseBlock(filters, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * _RESIDUAL + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN / BSRGAN: a trunk of RRDB blocks, then ×2 nearest-neighbour steps."""

    def __init__(self, kind: UpscalerKind) -> None:
        super().__init__()
        self.kind = kind
        self.conv_first = _conv(kind.in_channels, kind.num_filters)
        self.body = nn.Sequential(*(RRDB(kind.num_filters, kind.growth) for _ in range(kind.num_blocks)))
        self.conv_body = _conv(kind.num_filters, kind.num_filters)
        for i in range(kind.upconvs):
            self.add_module(f"conv_up{i + 1}", _conv(kind.num_filters, kind.num_filters))
        self.conv_hr = _conv(kind.num_filters, kind.num_filters)
        self.conv_last = _conv(kind.num_filters, kind.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind.shuffle > 1:
            x = F.pixel_unshuffle(x, self.kind.shuffle)
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for i in range(self.kind.upconvs):
            up = getattr(self, f"conv_up{i + 1}")
            features = F.leaky_relu(up(F.interpolate(features, scale_factor=2, mode="nearest")), _SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), _SLOPE))


class CompactNet(nn.Module):
    """Real-ESRGAN's SRVGGNetCompact: plain convolutions with PReLU, a pixel shuffle, plus the
    nearest-neighbour enlargement of the input."""

    def __init__(self, kind: UpscalerKind) -> None:
        super().__init__()
        self.kind = kind
        layers: list[nn.Module] = [_conv(kind.in_channels, kind.num_filters), nn.PReLU(kind.num_filters)]
        for _ in range(kind.num_blocks):
            layers += [_conv(kind.num_filters, kind.num_filters), nn.PReLU(kind.num_filters)]
        layers.append(_conv(kind.num_filters, kind.out_channels * kind.scale * kind.scale))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(self.body(x), self.kind.scale)
        return out + F.interpolate(x, scale_factor=self.kind.scale, mode="nearest")


def build_network(kind: UpscalerKind) -> nn.Module:
    return CompactNet(kind) if kind.arch == "compact" else RRDBNet(kind)
