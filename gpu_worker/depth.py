"""The `depth_anything_v2` and `depth_anything` preprocessors' network: Depth Anything (a DINOv2 vision
transformer and a DPT head), written from its files' layout (`depth_anything_v2_vits/vitb/vitl.pth` as
released, or `depth_anything_v2_vitl.safetensors` as the A1111 extension downloads it; V1's
`depth_anything_vitl14.pth`: the same tensors' names), its size read from them. The two versions
differ in which transformer blocks the head reads: V2 four spread through the encoder, V1 its last four
(LiheYoung/Depth-Anything's `get_intermediate_layers(x, 4)`). The map is the extension's: the picture scaled so both sides are at least 518 pixels
and multiples of 14 (bicubic), ImageNet-normalised, the relative depth brought back to the picture's
size and stretched between its nearest and farthest point, white near.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch import nn

INPUT_SIZE, PATCH = 518, 14
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The transformer blocks whose outputs the head reads, by the encoder's depth (ViT-S and ViT-B: 12, ViT-L: 24).
TAPS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23)}


class Attention(nn.Module):
    """A vision transformer's multi-head self-attention (qkv in one projection): DINOv2's and ViT-B's."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, device=torch.get_default_device()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim * 4), nn.Linear(dim * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, heads), _Mlp(dim)
        self.ls1, self.ls2 = _LayerScale(dim), _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Encoder(nn.Module):
    """DINOv2 with the positions of a 518-pixel square, interpolated to the picture's grid."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, device=torch.get_default_device()))
        self.pos_embed = nn.Parameter(torch.zeros(1, (INPUT_SIZE // PATCH) ** 2 + 1, dim, device=torch.get_default_device()))
        self.mask_token = nn.Parameter(torch.zeros(1, dim, device=torch.get_default_device()))  # in the file; unused at inference
        self.blocks = nn.ModuleList(_Block(dim, dim // 64) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _positions(self, rows: int, cols: int) -> torch.Tensor:
        grid = self.pos_embed.shape[1] - 1
        side = math.sqrt(grid)
        patches = self.pos_embed[:, 1:].float().reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        # DINOv2's interpolation: by a scale factor with 0.1 added to the grid, bicubic.
        scaled = nn.functional.interpolate(patches, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
        scaled = scaled.permute(0, 2, 3, 1).reshape(1, -1, patches.shape[1])
        return torch.cat([self.pos_embed[:, :1].float(), scaled], dim=1).to(self.pos_embed.dtype)

    def taps(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        rows, cols = x.shape[2] // PATCH, x.shape[3] // PATCH
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self._positions(rows, cols)
        out = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in taps:
                out.append(self.norm(tokens)[:, 1:])
        return out


class _ResidualUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(nn.functional.relu(self.conv1(nn.functional.relu(x)))) + x


class _Fusion(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1, self.resConfUnit2 = _ResidualUnit(features), _ResidualUnit(features)  # the file's names

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        resize = {"size": size} if size is not None else {"scale_factor": 2}
        x = nn.functional.interpolate(x, **resize, mode="bilinear", align_corners=True)  # type: ignore[arg-type]
        return self.out_conv(x)


class _Head(nn.Module):
    def __init__(self, dim: int, features: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(dim, w, 1) for w in widths)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(widths[0], widths[0], 4, 4), nn.ConvTranspose2d(widths[1], widths[1], 2, 2),
            nn.Identity(), nn.Conv2d(widths[3], widths[3], 3, 2, 1),
        ])  # fmt: skip
        self.scratch = nn.Module()
        for i, width in enumerate(widths, start=1):
            self.scratch.add_module(f"layer{i}_rn", nn.Conv2d(width, features, 3, padding=1, bias=False))
            self.scratch.add_module(f"refinenet{i}", _Fusion(features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU(), nn.Identity()
        )

    def forward(self, taps: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
        layers = []
        for i, tokens in enumerate(taps):
            x = tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[-1], rows, cols)
            layers.append(getattr(self.scratch, f"layer{i + 1}_rn")(self.resize_layers[i](self.projects[i](x))))
        s = self.scratch
        path = s.refinenet4(layers[3], size=layers[2].shape[2:])
        path = s.refinenet3(path, layers[2], size=layers[1].shape[2:])
        path = s.refinenet2(path, layers[1], size=layers[0].shape[2:])
        path = s.refinenet1(path, layers[0])
        out = nn.functional.interpolate(s.output_conv1(path), (rows * PATCH, cols * PATCH), mode="bilinear", align_corners=True)
        return s.output_conv2(out)


class DepthAnythingV2(nn.Module):
    def __init__(
        self,
        dim: int = 1024,
        depth: int = 24,
        features: int = 256,
        widths: tuple[int, int, int, int] = (256, 512, 1024, 1024),
        version: int = 2,
    ) -> None:
        super().__init__()
        if depth not in TAPS:
            raise ValueError(f"a Depth Anything encoder of {depth} blocks (ViT-S, ViT-B and ViT-L are run)")
        self.taps = TAPS[depth] if version == 2 else tuple(range(depth - 4, depth))
        self.pretrained = _Encoder(dim, depth)
        self.depth_head = _Head(dim, features, widths)

    @classmethod
    def for_state(cls, shapes: dict[str, tuple[int, ...]], version: int = 2) -> DepthAnythingV2:
        """Sized as its file's tensors say: width, depth, the head's features and widths."""
        dim = shapes["pretrained.cls_token"][-1]
        depth = len({k.split(".")[2] for k in shapes if k.startswith("pretrained.blocks.")})
        widths = tuple(shapes[f"depth_head.projects.{i}.weight"][0] for i in range(4))
        return cls(dim, depth, shapes["depth_head.scratch.layer1_rn.weight"][0], widths, version)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[2] // PATCH, x.shape[3] // PATCH
        return nn.functional.relu(self.depth_head(self.pretrained.taps(x, self.taps), rows, cols)).squeeze(1)


def _multiple_of_14(x: float, at_least: int) -> int:
    y = int(np.round(x / PATCH) * PATCH)
    return y if y >= at_least else int(np.ceil(x / PATCH) * PATCH)


@torch.inference_mode()
def depth_map(network: DepthAnythingV2, rgb: np.ndarray, device: torch.device | str) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = max(INPUT_SIZE / height, INPUT_SIZE / width)  # both sides at least 518
    size = (_multiple_of_14(width * scale, INPUT_SIZE), _multiple_of_14(height * scale, INPUT_SIZE))
    picture = cv2.resize(rgb.astype(np.float64) / 255.0, size, interpolation=cv2.INTER_CUBIC)
    picture = (picture - np.array(MEAN)) / np.array(STD)
    data = torch.from_numpy(np.ascontiguousarray(picture.transpose(2, 0, 1), dtype=np.float32))[None].to(device)
    network.to(device)
    try:
        depth = network(data)
    finally:
        network.to("cpu")
    depth = nn.functional.interpolate(depth[None].float(), (height, width), mode="bilinear", align_corners=False)[0, 0]
    span = (depth.max() - depth.min()).clamp_min(1e-8)
    return ((depth - depth.min()) / span * 255.0).cpu().numpy().astype(np.uint8)
