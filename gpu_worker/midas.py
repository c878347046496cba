"""The `depth_midas` preprocessor's network: MiDaS v3 DPT-Hybrid (`dpt_hybrid-midas-501f0c75.pt`, the
A1111 extension's default depth annotator), written from the file's layout (isl-org/MiDaS's DPT on
timm's `vit_base_resnet50_384`), its sizes read from its tensors.

Facts followed (MiDaS dpt_depth.py, vit.py, blocks.py; timm's ResNetV2 and VisionTransformer):
- the backbone: a ResNet-v2 without pre-activation — a 7×7 stem, three stages of bottlenecks (3, 4 and 9),
  weight-standardised convolutions with TensorFlow's "same" padding, GroupNorm(32) — whose last stage,
  projected 1×1 to the transformer's width, is the transformer's tokens, one per 16 pixels;
- a ViT-B: the class token, positions resized bilinearly to the picture's grid, twelve blocks;
- the head reads the first two stages' outputs (1/4, 1/8) and blocks 9 and 12 (their tokens with the
  class token projected in, 1/16, and 1/32 through a strided convolution), fuses them from the coarsest
  up (residual units, ×2 bilinear with corners aligned) and gives a non-negative inverse depth.
The extension's map: the picture as it is (padded to a multiple of 64 by the caller) in [-1, 1], the
depth stretched from its minimum to its maximum, white near.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gpu_worker.depth import Attention

PATCH = 16
STAGE_STRIDES = (1, 2, 2)


def _same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "same" padding (timm's pad_same): the extra pixel, when odd, on the right and bottom."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return nn.functional.pad(x, pads, value=value)


class _StdConv(nn.Conv2d):
    """timm's StdConv2dSame: each filter standardised (mean 0, variance 1) as it is used."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(channels_in, channels_out, kernel, stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.reshape(self.out_channels, -1)
        mean, var = weight.mean(1, keepdim=True), weight.var(1, unbiased=False, keepdim=True)
        weight = ((weight - mean) / torch.sqrt(var + 1e-8)).reshape_as(self.weight)
        x = _same_pad(x, self.kernel_size[0], self.stride[0])
        return nn.functional.conv2d(x, weight, None, self.stride)


class _GroupNormAct(nn.GroupNorm):
    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(32, channels, eps=1e-5)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return nn.functional.relu(x) if self.act else x


class _Downsample(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv = _StdConv(channels_in, channels_out, 1, stride)
        self.norm = _GroupNormAct(channels_out, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _Bottleneck(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, project: bool) -> None:
        super().__init__()
        mid = channels_out // 4
        if project:
            self.downsample = _Downsample(channels_in, channels_out, stride)
        self.conv1, self.norm1 = _StdConv(channels_in, mid, 1), _GroupNormAct(mid)
        self.conv2, self.norm2 = _StdConv(mid, mid, 3, stride), _GroupNormAct(mid)
        self.conv3, self.norm3 = _StdConv(mid, channels_out, 1), _GroupNormAct(channels_out, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if hasattr(self, "downsample") else x
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return nn.functional.relu(x + shortcut)


class _Stage(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(_Bottleneck(channels_in if i == 0 else channels_out, channels_out, stride if i == 0 else 1, i == 0) for i in range(blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class _Stem(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = _StdConv(3, width, 7, 2)
        self.norm = _GroupNormAct(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return nn.functional.max_pool2d(_same_pad(x, 3, 2, value=-math.inf), 3, 2)


class _Backbone(nn.Module):
    def __init__(self, stem: int, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = _Stem(stem)
        channels = [stem, *widths]
        self.stages = nn.ModuleList(
            _Stage(channels[i], channels[i + 1], STAGE_STRIDES[i], blocks[i]) for i in range(len(widths))
        )


class _PatchEmbed(nn.Module):
    def __init__(self, backbone: _Backbone, channels: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Conv2d(channels, dim, 1)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _VisionTransformer(nn.Module):
    def __init__(self, backbone: _Backbone, dim: int, depth: int, hidden: int, grid: int, classes: int | None) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, device=torch.get_default_device()))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim, device=torch.get_default_device()))
        self.patch_embed = _PatchEmbed(backbone, backbone.stages[-1].blocks[0].conv3.out_channels, dim)
        self.blocks = nn.ModuleList(_Block(dim, max(1, dim // 64), hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if classes:  # timm's classifier, in the file; never used
            self.head = nn.Linear(dim, classes)

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        grid = self.pos_embed[:, 1:]
        side = int(math.sqrt(grid.shape[1]))
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(rows, cols), mode="bilinear").permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)


class _ProjectReadout(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, 1:]
        return self.project(torch.cat([tokens, x[:, :1].expand_as(tokens)], dim=-1))


class _Pretrained(nn.Module):
    def __init__(self, model: _VisionTransformer, dim: int, widths: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        # Indices as the file numbers them: readout, transpose, unflatten (no tensors), then convolutions.
        self.act_postprocess3 = nn.ModuleDict({"0": _ProjectReadout(dim), "3": nn.Conv2d(dim, widths[0], 1)})
        self.act_postprocess4 = nn.ModuleDict(
            {"0": _ProjectReadout(dim), "3": nn.Conv2d(dim, widths[1], 1), "4": nn.Conv2d(widths[1], widths[1], 3, 2, 1)}
        )

    def forward(self, x: torch.Tensor, taps: tuple[int, int]) -> list[torch.Tensor]:
        vit = self.model
        h = vit.patch_embed.backbone.stem(x)
        stages = []
        for stage in vit.patch_embed.backbone.stages:
            h = stage(h)
            stages.append(h)
        rows, cols = h.shape[2:]
        tokens = vit.patch_embed.proj(h).flatten(2).transpose(1, 2)
        tokens = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + vit.positions(rows, cols)
        tapped = []
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i in taps:
                tapped.append(tokens)

        def grid(t: torch.Tensor, post: nn.ModuleDict) -> torch.Tensor:
            return post["0"](t).transpose(1, 2).unflatten(2, (rows, cols))

        third = self.act_postprocess3["3"](grid(tapped[0], self.act_postprocess3))
        fourth = self.act_postprocess4["4"](self.act_postprocess4["3"](grid(tapped[1], self.act_postprocess4)))
        return [stages[0], stages[1], third, fourth]


class _ResidualUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(nn.functional.relu(self.conv1(nn.functional.relu(x))))


class _Fusion(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = _ResidualUnit(features)
        self.resConfUnit2 = _ResidualUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = nn.functional.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Interpolate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Scratch(nn.Module):
    def __init__(self, widths: tuple[int, int, int, int], features: int) -> None:
        super().__init__()
        for i, width in enumerate(widths, start=1):
            self.add_module(f"layer{i}_rn", nn.Conv2d(width, features, 3, 1, 1, bias=False))
            self.add_module(f"refinenet{i}", _Fusion(features))
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, 1, 1), _Interpolate(), nn.Conv2d(features // 2, 32, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(32, 1, 1), nn.ReLU(), nn.Identity(),
        )  # fmt: skip


class MidasHybrid(nn.Module):
    """DPTDepthModel(backbone="vitb_rn50_384", non_negative=True), sized by its file."""

    def __init__(
        self,
        stem: int = 64,
        stage_widths: tuple[int, int, int] = (256, 512, 1024),
        stage_blocks: tuple[int, int, int] = (3, 4, 9),
        dim: int = 768,
        depth: int = 12,
        hidden: int = 3072,
        grid: int = 24,
        features: int = 256,
        classes: int | None = 1000,
    ) -> None:
        super().__init__()
        vit = _VisionTransformer(_Backbone(stem, stage_widths, stage_blocks), dim, depth, hidden, grid, classes)
        self.taps = (depth * 2 // 3, depth - 1)  # blocks 9 and 12 of twelve (MiDaS' hooks 8 and 11)
        self.pretrained = _Pretrained(vit, dim, (dim, dim))
        self.scratch = _Scratch((stage_widths[0], stage_widths[1], dim, dim), features)

    @classmethod
    def for_state(cls, shapes: dict[str, tuple[int, ...]]) -> MidasHybrid:
        backbone = "pretrained.model.patch_embed.backbone."
        stages = sorted({int(k.split(".")[5]) for k in shapes if k.startswith(backbone + "stages.")})
        blocks = tuple(len({k.split(".")[7] for k in shapes if k.startswith(f"{backbone}stages.{s}.blocks.")}) for s in stages)
        widths = tuple(shapes[f"{backbone}stages.{s}.blocks.0.conv3.weight"][0] for s in stages)
        dim = shapes["pretrained.model.cls_token"][-1]
        depth = len({k.split(".")[3] for k in shapes if k.startswith("pretrained.model.blocks.")})
        head = shapes.get("pretrained.model.head.weight")
        return cls(
            shapes[backbone + "stem.conv.weight"][0], widths, blocks, dim, depth,  # type: ignore[arg-type]
            shapes["pretrained.model.blocks.0.mlp.fc1.weight"][0], int(math.sqrt(shapes["pretrained.model.pos_embed"][1] - 1)),
            shapes["scratch.layer1_rn.weight"][0], head[0] if head else None,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.pretrained(x, self.taps)
        s = self.scratch
        ready = [getattr(s, f"layer{i}_rn")(layer) for i, layer in enumerate(layers, start=1)]
        path = s.refinenet4(ready[3])
        path = s.refinenet3(path, ready[2])
        path = s.refinenet2(path, ready[1])
        path = s.refinenet1(path, ready[0])
        return s.output_conv(path).squeeze(1)


@torch.inference_mode()
def midas_map(network: MidasHybrid, rgb: np.ndarray, device: torch.device | str) -> np.ndarray:
    """The extension's depth_midas map of `rgb` (H×W×3 uint8, sides multiples of 64): gray, white near."""
    picture = torch.from_numpy(np.ascontiguousarray(rgb)).to(device=device, dtype=torch.float32).permute(2, 0, 1)[None]
    network.to(device)
    try:
        depth = network(picture / 127.5 - 1.0)[0]
    finally:
        network.to("cpu")
    depth = depth - depth.min()
    depth = depth / depth.max().clamp_min(1e-8)
    return (depth * 255.0).clip(0, 255).cpu().numpy().astype(np.uint8)
