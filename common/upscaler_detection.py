"""What an upscaler model file holds, from its tensors' names and shapes alone (no torch).

The ESRGAN family is what A1111, Forge and ComfyUI users keep in `models/ESRGAN`, `models/RealESRGAN`
and `models/upscale_models`: the RRDB network in its three naming schemes (the original ESRGAN
`model.N…` layout, Real-ESRGAN's `conv_first`/`body.N.rdbK` and BSRGAN's `RRDB_trunk`), Real-ESRGAN's
pixel-unshuffle variants (x2plus, x1) and its compact SRVGGNet (realesr-general-x4v3, animevideov3).
Facts followed: xinntao's Real-ESRGAN/BasicSR architectures, and chaiNNer's spandrel for how the
layouts map onto one another and how the scale is read from the layer count.

Everything here is the bot's check of a hostile file: a layout we do not know, an inconsistent one
or an absurd size is refused with a reason before a worker reads a tensor. The worker builds the
network from the same description (gpu_worker/upscaler_nets.py) and renames the tensors with
`canonical_names`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "upscale_models")  # A1111, A1111, ComfyUI
MAX_FILTERS = 256
MAX_BLOCKS = 64
MAX_CONVS = 64
SCALES = (1, 2, 4, 8)

Shapes = Mapping[str, Sequence[int]]

# A layer number in a name is a number an attacker chose: at most three digits are read as one (no
# network here has 1,000 layers), so a name like "model.30000004.weight" or one with 5,000 digits
# matches nothing and the file is refused as an unknown layout, before any list is built from it.
_N = r"(0|[1-9]\d{0,2})"
_OLD_RDB = re.compile(rf"model\.1\.sub\.{_N}\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")
_BSRGAN_RDB = re.compile(rf"RRDB_trunk\.{_N}\.RDB(\d)\.conv(\d)\.(weight|bias)")
_NEW_RDB = re.compile(rf"body\.{_N}\.rdb(\d)\.conv(\d)\.(weight|bias)")
_OLD_TOP = re.compile(rf"model\.{_N}\.(weight|bias)")
_UPCONV = re.compile(r"(?:conv_up|upconv)(\d)\.(weight|bias)")
_COMPACT = re.compile(rf"body\.{_N}\.(weight|bias)")


class UpscalerFileError(ValueError):
    """Not an upscaler we can run; the message says why."""


@dataclass(frozen=True)
class UpscalerKind:
    arch: str  # rrdb | compact
    layout: str  # esrgan | realesrgan | bsrgan | compact
    scale: int  # what one pass multiplies each side by
    in_channels: int  # of the network's first convolution (12 or 48 after a pixel unshuffle)
    out_channels: int
    num_filters: int
    num_blocks: int  # RRDB blocks, or the compact network's middle convolutions
    growth: int  # RRDB: the dense blocks' growth channels
    upconvs: int  # RRDB: ×2 nearest-neighbour steps inside the network
    shuffle: int  # RRDB: pixel-unshuffle factor (Real-ESRGAN x2plus: 2, x1: 4), 1 = none

    @property
    def label(self) -> str:
        if self.arch == "compact":
            return f"Real-ESRGAN compact {self.scale}x ({self.num_filters}nf, {self.num_blocks} convs)"
        names = {"esrgan": "ESRGAN", "realesrgan": "Real-ESRGAN", "bsrgan": "BSRGAN"}
        return f"{names[self.layout]} {self.scale}x ({self.num_filters}nf, {self.num_blocks} blocks)"


def detect_upscaler(shapes: Shapes) -> UpscalerKind:
    """The network a state dict describes; UpscalerFileError naming what does not fit."""
    names = set(shapes)
    if "model.0.weight" in names and any(".conv1x1." in n for n in names):
        raise UpscalerFileError("an ESRGAN+ model (conv1x1 layers); only plain ESRGAN-family networks run here")
    if "model.0.weight" in names and "model.1.sub.0.RDB1.conv1.0.weight" in names:
        return _rrdb(shapes, "esrgan")
    if {"conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_last.weight"} <= names:
        return _rrdb(shapes, "realesrgan")
    if {"conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight", "conv_last.weight"} <= names:
        return _rrdb(shapes, "bsrgan")
    if "body.0.weight" in names and "body.1.weight" in names and len(shapes["body.1.weight"]) == 1:
        return _compact(shapes)
    known = sorted(names)[:3]
    raise UpscalerFileError(
        "not an ESRGAN-family upscaler (ESRGAN, Real-ESRGAN, BSRGAN, Real-ESRGAN compact); "
        f"its first tensors are {', '.join(known) or 'none'}"
    )


def state_dict_of(root: Mapping[str, object]) -> Mapping[str, object]:
    """The weights inside a training checkpoint: BasicSR and Real-ESRGAN save them under `params_ema`
    (the averaged weights, which Real-ESRGAN's inference prefers) or `params`."""
    for key in ("params_ema", "params"):
        inner = root.get(key)
        if isinstance(inner, Mapping):
            return inner
    return root


def canonical_names(shapes: Shapes) -> dict[str, str]:
    """Each tensor's name in the layout gpu_worker/upscaler_nets.py builds (Real-ESRGAN's names)."""
    kind = detect_upscaler(shapes)
    if kind.layout in ("realesrgan", "compact"):
        return {n: n for n in shapes}
    out: dict[str, str] = {}
    if kind.layout == "bsrgan":
        fixed = {"trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_first": "conv_first", "conv_last": "conv_last"}
        for name in shapes:
            if m := _BSRGAN_RDB.fullmatch(name):
                out[name] = f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
            elif m := _UPCONV.fullmatch(name):
                out[name] = f"conv_up{m[1]}.{m[2]}"
            else:
                layer, _, part = name.rpartition(".")
                out[name] = f"{fixed.get(layer, layer)}.{part}"
        return out
    last = _old_last_index(shapes)
    for name in shapes:
        if m := _OLD_RDB.fullmatch(name):
            out[name] = f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
        elif name.startswith(f"model.1.sub.{kind.num_blocks}."):
            out[name] = f"conv_body.{name.rpartition('.')[2]}"
        elif m := _OLD_TOP.fullmatch(name):
            index, part = int(m[1]), m[2]
            if index == 0:
                out[name] = f"conv_first.{part}"
            elif index == last:
                out[name] = f"conv_last.{part}"
            elif index == last - 2:
                out[name] = f"conv_hr.{part}"
            else:
                out[name] = f"conv_up{index // 3}.{part}"
        else:
            out[name] = name  # left as it is: loading it will fail, naming the tensor
    return out


def _old_last_index(shapes: Shapes) -> int:
    indices = [int(m[1]) for n in shapes if (m := _OLD_TOP.fullmatch(n))]
    return max(indices, default=0)


def _rrdb(shapes: Shapes, layout: str) -> UpscalerKind:
    pattern = {"esrgan": _OLD_RDB, "realesrgan": _NEW_RDB, "bsrgan": _BSRGAN_RDB}[layout]
    blocks = {int(m[1]) for n in shapes if (m := pattern.fullmatch(n))}
    first = "model.0.weight" if layout == "esrgan" else "conv_first.weight"
    conv1 = {
        "esrgan": "model.1.sub.0.RDB1.conv1.0.weight",
        "realesrgan": "body.0.rdb1.conv1.weight",
        "bsrgan": "RRDB_trunk.0.RDB1.conv1.weight",
    }[layout]
    if layout == "esrgan":
        last = _old_last_index(shapes)
        if last < 4 or (last - 4) % 3:
            raise UpscalerFileError(f"an ESRGAN model whose last layer is model.{last}: not a layout we know")
        upconvs = (last - 4) // 3
        if upconvs > 3:  # 2**3 = 8, the largest scale that runs here
            raise UpscalerFileError(f"an ESRGAN model with {upconvs} upsampling layers; at most 3 run here")
        expected = [f"model.{3 * (i + 1)}.weight" for i in range(upconvs)] + [f"model.{last - 2}.weight"]
        final = f"model.{last}.weight"
    else:
        upconvs = len({int(m[1]) for n in shapes if (m := _UPCONV.fullmatch(n))})
        expected = [f"{'upconv' if layout == 'bsrgan' else 'conv_up'}{i + 1}.weight" for i in range(upconvs)]
        expected.append("HRconv.weight" if layout == "bsrgan" else "conv_hr.weight")
        final = "conv_last.weight"
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise UpscalerFileError(f"an RRDB upscaler without {missing[0]}")
    in_channels, out_channels = _dim(shapes[first], 1), _dim(shapes[final], 0)
    filters, growth = _dim(shapes[first], 0), _dim(shapes[conv1], 0)
    count = len(blocks)
    if blocks != set(range(count)):
        raise UpscalerFileError("an RRDB upscaler with gaps in its block numbering")
    shuffle = 1
    if out_channels in (1, 3) and in_channels in (out_channels * 4, out_channels * 16):
        shuffle = math.isqrt(in_channels // out_channels)
    elif in_channels != out_channels:
        raise UpscalerFileError(f"an RRDB upscaler taking {in_channels} channels and giving {out_channels}")
    if (2**upconvs) % shuffle:
        raise UpscalerFileError("an RRDB upscaler that would shrink the picture")
    scale = 2**upconvs // shuffle
    _check_sizes(scale, filters, count, range(1, MAX_BLOCKS + 1), growth)
    return UpscalerKind("rrdb", layout, scale, in_channels, out_channels, filters, count, growth, upconvs, shuffle)


def _compact(shapes: Shapes) -> UpscalerKind:
    indices = sorted({int(m[1]) for n in shapes if (m := _COMPACT.fullmatch(n))})
    last = indices[-1]
    if last < 2 or last % 2 or last > 2 * MAX_CONVS + 2 or indices != list(range(last + 1)):
        raise UpscalerFileError("a compact upscaler whose layers are not numbered conv, PReLU, …, conv")
    first = shapes["body.0.weight"]
    in_channels, filters = _dim(first, 1), _dim(first, 0)
    out = _dim(shapes[f"body.{last}.weight"], 0)
    scale = math.isqrt(max(out // max(in_channels, 1), 0))
    if in_channels not in (1, 3) or scale * scale * in_channels != out:
        raise UpscalerFileError(f"a compact upscaler with {in_channels} channels in and {out} out: not a scale")
    convs = (last - 2) // 2
    _check_sizes(scale, filters, convs, range(MAX_CONVS + 1), 0)
    return UpscalerKind("compact", "compact", scale, in_channels, in_channels, filters, convs, 0, 0, 1)


def _dim(shape: Sequence[int], axis: int) -> int:
    if len(shape) != 4 and not (len(shape) == 1 and axis == 0):
        raise UpscalerFileError(f"a convolution weight of shape {list(shape)}; expected four dimensions")
    return int(shape[axis])


def _check_sizes(scale: int, filters: int, blocks: int, allowed_blocks: range, growth: int) -> None:
    if scale not in SCALES:
        raise UpscalerFileError(f"an upscaler of scale {scale}; Easel runs {', '.join(map(str, SCALES))}x")
    if not 1 <= filters <= MAX_FILTERS or not 0 <= growth <= MAX_FILTERS:
        raise UpscalerFileError(f"an upscaler with {filters} filters; at most {MAX_FILTERS} run here")
    if blocks not in allowed_blocks:
        raise UpscalerFileError(f"an upscaler with {blocks} blocks; at most {allowed_blocks[-1]} run here")
