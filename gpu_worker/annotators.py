"""The annotator networks some ControlNet preprocessors run (lllyasviel/Annotators' files, as the
A1111 extension runs them): HED for soft edges (`ControlNetHED.pth`: softedge_hed, softedge_hedsafe,
scribble_hed), the line drawing generator (`sk_model.pth` for lineart_realistic, `sk_model2.pth`
for lineart_coarse), OpenPose's body model (`body_pose_model.pth`: openpose, its skeletons drawn
by gpu_worker/openpose.py), Depth Anything V2 and V1 (depth_anything_v2, depth_anything: gpu_worker/depth.py)
MiDaS DPT-Hybrid (depth_midas: gpu_worker/midas.py), M-LSD (mlsd: gpu_worker/mlsd.py) and PiDiNet (softedge_pidinet, softedge_pidisafe,
scribble_pidinet: gpu_worker/pidinet.py). Each network is written here from its file's layout (its tensors' names and
shapes); the files are read as state dicts only, a pickle after the bot's allow-list reader vetted
it and then by torch with weights_only. They run in float32 on the worker's device: small networks,
whose maps steer the drawing as they are.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import safetensors.torch
import torch
from torch import nn

from gpu_worker.depth import DepthAnythingV2, depth_map
from gpu_worker.midas import MidasHybrid, midas_map
from gpu_worker.mlsd import MlsdLarge, mlsd_map
from gpu_worker.model_parts import PartError, load_exact
from gpu_worker.openpose import pose_map
from gpu_worker.pidinet import PiDiNet, pidinet_map

RESIDENT = 2  # annotators kept in CPU RAM between batches


class AnnotatorError(Exception):
    """An annotator file that cannot be run: the message names it, for the person."""


class _HedBlock(nn.Module):
    def __init__(self, channels_in: int, channels: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(nn.Conv2d(channels_in if i == 0 else channels, channels, 3, padding=1) for i in range(layers))
        )
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            x = nn.functional.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = nn.functional.relu(conv(x))
        return x, self.projection(x)


class HedNetwork(nn.Module):
    """ControlNetHED.pth: five VGG-like blocks, each's one-channel projection an edge score."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1, device=torch.get_default_device()))
        widths = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
        for i, (cin, cout, layers) in enumerate(widths, start=1):
            self.add_module(f"block{i}", _HedBlock(cin, cout, layers))

    def forward(self, rgb255: torch.Tensor) -> list[torch.Tensor]:
        h = rgb255 - self.norm
        scores = []
        for i in range(1, 6):
            h, score = getattr(self, f"block{i}")(h, pool=i > 1)
            scores.append(score)
        return scores


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """sk_model.pth and sk_model2.pth: a picture-to-picture generator, two strided convolutions down,
    three residual blocks, two transposed convolutions up, a sigmoid's one channel out."""

    def __init__(self, residual_blocks: int = 3) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU())
        self.model1 = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.InstanceNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.InstanceNorm2d(256), nn.ReLU(),
        )  # fmt: skip
        self.model2 = nn.Sequential(*(_Residual(256) for _ in range(residual_blocks)))
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb01)))))


class _UnetLevel(nn.Module):
    """One level of pix2pix's U-Net (its UnetSkipConnectionBlock): down by a strided convolution, the
    inner levels, up by a transposed one; every level but the outermost passes its input on beside
    its output. The layers sit at the indices the files' names give them."""

    def __init__(self, outer: int, inner: int, sub: nn.Module | None, channels_in: int | None = None) -> None:
        super().__init__()
        down = nn.Conv2d(channels_in or outer, inner, 4, 2, 1)
        self.outermost = channels_in is not None
        if self.outermost:  # [down, inner levels, ReLU, up, Tanh]
            layers = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif sub is None:  # innermost: [LeakyReLU, down, ReLU, up, norm]
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, 2, 1), nn.InstanceNorm2d(outer)]
        else:  # [LeakyReLU, down, norm, inner levels, ReLU, up, norm]
            layers = [
                nn.LeakyReLU(0.2), down, nn.InstanceNorm2d(inner), sub, nn.ReLU(),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.InstanceNorm2d(outer),
            ]  # fmt: skip
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class LineartAnimeGenerator(nn.Module):
    """netG.pth (lineart_anime): pix2pix's U-Net generator, RGB in, one channel out, eight levels down
    from 64 channels (the released file; its width is read from the file, so a tiny one runs too)."""

    def __init__(self, width: int = 64, levels: int = 8) -> None:
        super().__init__()
        level = _UnetLevel(width * 8, width * 8, None)
        for _ in range(levels - 5):
            level = _UnetLevel(width * 8, width * 8, level)
        for outer in (width * 4, width * 2, width):
            level = _UnetLevel(outer, outer * 2, level)
        self.model = _UnetLevel(1, width, level, channels_in=3)

    @classmethod
    def for_state(cls, shapes: dict[str, tuple[int, ...]]) -> LineartAnimeGenerator:
        levels = max(k.count("model.") for k in shapes) - 1  # the outermost's "model.model.", one more a level in
        return cls(shapes["model.model.0.weight"][0], levels)

    def forward(self, rgb_signed: torch.Tensor) -> torch.Tensor:
        return self.model(rgb_signed)


Shapes = dict[str, tuple[int, ...]]


def read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        return dict(safetensors.torch.load_file(str(path)))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw = raw.get("state_dict", raw) if isinstance(raw, dict) else {}
    if isinstance(raw.get("model"), dict) and "optimizer" in raw:  # MiDaS' training checkpoints (its BaseModel.load)
        raw = raw["model"]
    return {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def load_annotator(path: Path, layout: str, name: str) -> nn.Module:
    if layout not in NETWORKS:
        raise AnnotatorError(f"the annotator {name} is of a kind Easel does not run")
    if not path.is_file():
        raise AnnotatorError(f"the annotator {name} is no longer on disk")
    try:
        state = {k: v.float() for k, v in read_state(path).items()}
        with torch.device("meta"):
            network = NETWORKS[layout]({k: tuple(v.shape) for k, v in state.items()})
        load_exact(network, state, f"the annotator {name}")
    except (PartError, RuntimeError, KeyError, ValueError, OSError, IndexError) as e:  # a vetted file of the wrong shape
        raise AnnotatorError(f"the annotator {name} cannot be read as {layout}'s network ({type(e).__name__})") from None
    return network.eval()


class AnnotatorCache:
    def __init__(self, size: int = RESIDENT) -> None:
        self.size = size
        self._networks: OrderedDict[str, nn.Module] = OrderedDict()

    def get(self, path: str, sha256: str, layout: str, name: str) -> nn.Module:
        key = sha256 or path
        if key in self._networks:
            self._networks.move_to_end(key)
            return self._networks[key]
        network = load_annotator(Path(path), layout, name)
        self._networks[key] = network
        while len(self._networks) > self.size:
            self._networks.popitem(last=False)
        return network


@torch.inference_mode()
def run_annotator(
    networks: dict[str, nn.Module],
    module: str,
    rgb: np.ndarray,
    device: torch.device | str,
    thresholds: tuple[float | None, float | None] = (None, None),
) -> np.ndarray:
    """`module`'s map of `rgb` (H×W×3 uint8) as the extension makes it, from its networks by layout:
    gray (H×W uint8), the picture padded at its edges to a multiple of 64 for the network and the
    padding cut off again; a pose's skeletons in colour (H×W×3), at the body model's own scale, with
    hands and face when their networks are given (gpu_worker/openpose.py)."""
    if "openpose_body" in networks:
        return pose_map(networks, rgb, device)
    for version in ("depth_anything_v2", "depth_anything"):
        if version in networks:
            return depth_map(networks[version], rgb, device)  # type: ignore[arg-type]
    [network] = networks.values()
    height, width = rgb.shape[:2]
    if isinstance(network, LineartAnimeGenerator):
        return _lineart_anime(network, rgb, device)
    padded = np.pad(rgb, ((0, -height % 64), (0, -width % 64), (0, 0)), mode="edge")
    picture = torch.from_numpy(padded).to(device=device, dtype=torch.float32).permute(2, 0, 1)[None]
    network.to(device)
    try:
        if isinstance(network, MidasHybrid):
            out = midas_map(network, padded, device)
        elif isinstance(network, MlsdLarge):  # its sliders: the lines' value and distance thresholds
            out = mlsd_map(network, padded, device, thresholds[0] or 0.1, thresholds[1] or 0.1)
        elif isinstance(network, PiDiNet):
            out = pidinet_map(network, padded, device, safe=module == "softedge_pidisafe")
        elif isinstance(network, HedNetwork):
            out = _hed(network, picture, safe=module == "softedge_hedsafe")
        else:
            out = 255 - (network(picture / 255.0)[0, 0].cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
    finally:
        network.to("cpu")
    out = out[:height, :width]
    if module in ("scribble_hed", "scribble_pidinet"):
        out = _scribble(out)
    return out


def _lineart_anime(network: LineartAnimeGenerator, rgb: np.ndarray, device: torch.device | str) -> np.ndarray:
    """The extension's: the picture scaled up to multiples of 256 (bicubic), in [-1, 1]; the line
    brought back to [0, 255] and the picture's size (bicubic), then inverted (white lines on black)."""
    height, width = rgb.shape[:2]
    size = (256 * math.ceil(width / 256), 256 * math.ceil(height / 256))
    scaled = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)
    picture = torch.from_numpy(scaled).to(device=device, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
    network.to(device)
    try:
        line = (network(picture)[0, 0] * 127.5 + 127.5).cpu().numpy()
    finally:
        network.to("cpu")
    line = cv2.resize(line, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return 255 - line


def _hed(network: HedNetwork, picture: torch.Tensor, safe: bool) -> np.ndarray:
    height, width = picture.shape[2:]
    scores = [nn.functional.interpolate(s, size=(height, width), mode="bilinear", align_corners=False) for s in network(picture)]
    edge = torch.sigmoid(torch.stack(scores).mean(dim=0))[0, 0].double().cpu().numpy()
    if safe:  # the extension's safe_step: three levels, fewer hidden details carried into the drawing
        edge = (edge.astype(np.float32) * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _scribble(edges: np.ndarray) -> np.ndarray:
    """scribble_hed: the soft edges thinned (non-maximum suppression over four directions at 127),
    blurred and set to black or white, as the extension's processor does."""
    x = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), 3.0)
    kernels = [
        np.array(k, dtype=np.uint8)
        for k in (
            [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
            [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
            [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
        )
    ]
    peaks = np.zeros_like(x)
    for kernel in kernels:
        np.putmask(peaks, cv2.dilate(x, kernel=kernel) == x, x)
    thin = np.where(peaks > 127, 255, 0).astype(np.uint8)
    blurred = cv2.GaussianBlur(thin, (0, 0), 3.0)
    return np.where(blurred > 4, 255, 0).astype(np.uint8)


# --- OpenPose (body) -------------------------------------------------------------------------------


def _body_layers() -> list[tuple[str, list[tuple[str, int, int, int]]]]:
    """body_pose_model.pth's blocks: (block, [(conv name, in, out, kernel)]), pools between the VGG
    stages as "pool"; names as the file's keys have them (CMU's model as ported to PyTorch)."""
    vgg = [("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("pool", 0, 0, 0), ("conv2_1", 64, 128, 3),
           ("conv2_2", 128, 128, 3), ("pool", 0, 0, 0), ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3),
           ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), ("pool", 0, 0, 0), ("conv4_1", 256, 512, 3),
           ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3)]  # fmt: skip
    blocks = [("features", vgg)]
    for branch, width in ((1, 38), (2, 19)):  # L1: part affinity fields, L2: part heatmaps (and background)
        blocks.append((f"stage1_L{branch}", [
            (f"conv5_1_CPM_L{branch}", 128, 128, 3), (f"conv5_2_CPM_L{branch}", 128, 128, 3),
            (f"conv5_3_CPM_L{branch}", 128, 128, 3), (f"conv5_4_CPM_L{branch}", 128, 512, 1),
            (f"conv5_5_CPM_L{branch}", 512, width, 1),
        ]))  # fmt: skip
    for stage in range(2, 7):
        for branch, width in ((1, 38), (2, 19)):
            convs = [(f"Mconv1_stage{stage}_L{branch}", 185, 128, 7)]
            convs += [(f"Mconv{i}_stage{stage}_L{branch}", 128, 128, 7) for i in range(2, 6)]
            convs += [(f"Mconv6_stage{stage}_L{branch}", 128, 128, 1), (f"Mconv7_stage{stage}_L{branch}", 128, width, 1)]
            blocks.append((f"stage{stage}_L{branch}", convs))
    return blocks


# Convolutions with no ReLU after them: each branch's last. The port lists stage 6's L1 twice and
# not its L2, so the heatmaps of the last stage go through a ReLU: kept, for the same peaks.
_NO_RELU = {f"conv5_5_CPM_L{b}" for b in (1, 2)} | {f"Mconv7_stage{s}_L{b}" for s in range(2, 6) for b in (1, 2)} | {"Mconv7_stage6_L1"}


class BodyPoseNetwork(nn.Module):
    """body_pose_model.pth: CMU's OpenPose body model (VGG features, six stages of two branches)."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks = _body_layers()
        for _, convs in self._blocks:
            for name, cin, cout, kernel in convs:
                if name != "pool":
                    self.add_module(name, nn.Conv2d(cin, cout, kernel, padding=kernel // 2))

    def _run(self, block: list[tuple[str, int, int, int]], x: torch.Tensor) -> torch.Tensor:
        for name, *_ in block:
            if name == "pool":
                x = nn.functional.max_pool2d(x, 2, 2)
                continue
            x = getattr(self, name)(x)
            if name not in _NO_RELU:
                x = nn.functional.relu(x)
        return x

    def forward(self, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = dict(self._blocks)
        features = self._run(blocks["features"], bgr)
        x = features
        for stage in range(1, 7):
            pafs = self._run(blocks[f"stage{stage}_L1"], x)
            heatmaps = self._run(blocks[f"stage{stage}_L2"], x)
            x = torch.cat([pafs, heatmaps, features], 1)
        return pafs, heatmaps


class CpmNetwork(nn.Module):
    """hand_pose_model.pth (21 hand keypoints and the background) and facenet.pth (70 face points
    and the background): OpenPose's VGG features, then six stages each reading the last one's maps
    beside the features."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        self.parts = parts
        self._features = [
            ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("pool", 0, 0, 0), ("conv2_1", 64, 128, 3),
            ("conv2_2", 128, 128, 3), ("pool", 0, 0, 0), ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3),
            ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), ("pool", 0, 0, 0), ("conv4_1", 256, 512, 3),
            ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3), ("conv5_1", 512, 512, 3),
            ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, 128, 3),
        ]  # fmt: skip
        self._stages = [[("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, parts, 1)]]
        for stage in range(2, 7):
            convs = [(f"Mconv1_stage{stage}", parts + 128, 128, 7)]
            convs += [(f"Mconv{i}_stage{stage}", 128, 128, 7) for i in range(2, 6)]
            self._stages.append([*convs, (f"Mconv6_stage{stage}", 128, 128, 1), (f"Mconv7_stage{stage}", 128, parts, 1)])
        for name, cin, cout, kernel in [*self._features, *(c for stage in self._stages for c in stage)]:
            if name != "pool":
                self.add_module(name, nn.Conv2d(cin, cout, kernel, padding=kernel // 2))

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        x = bgr
        for name, *_ in self._features:
            x = nn.functional.max_pool2d(x, 2, 2) if name == "pool" else nn.functional.relu(getattr(self, name)(x))
        features, maps = x, x
        for i, stage in enumerate(self._stages):
            h = maps if i == 0 else torch.cat([maps, features], 1)
            for j, (name, *_) in enumerate(stage):
                h = getattr(self, name)(h)
                if j < len(stage) - 1:  # each stage's last convolution gives its maps as they are
                    h = nn.functional.relu(h)
            maps = h
        return maps


# Each annotator layout's network, built for a file's tensor shapes: those of a fixed size ignore them,
# the others (Depth Anything's ViT-S/B/L, netG's width, MiDaS, PiDiNet) are sized by them.
NETWORKS: dict[str, Callable[[Shapes], nn.Module]] = {
    "hed": lambda _: HedNetwork(),
    "lineart": lambda _: LineartGenerator(),
    "lineart_anime": LineartAnimeGenerator.for_state,
    "openpose_body": lambda _: BodyPoseNetwork(),
    "openpose_hand": lambda _: CpmNetwork(22),
    "openpose_face": lambda _: CpmNetwork(71),
    "depth_anything_v2": partial(DepthAnythingV2.for_state, version=2),
    "depth_anything": partial(DepthAnythingV2.for_state, version=1),
    "midas": MidasHybrid.for_state,
    "pidinet": PiDiNet.for_state,
    "mlsd": lambda _: MlsdLarge(),
}
