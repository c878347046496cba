"""The noise a picture starts from, drawn as A1111 draws it (modules/rng.py `ImageRNG.first`; facts,
not code), so an A1111 picture's parameters start from the same noise here.

- **Source** (A1111's "Random number generator source", infotext `RNG`): `GPU` (A1111's default: no
  key written) is `torch.randn` on the CUDA device with a generator per picture; on a machine
  without CUDA, the same numbers computed by gpu_worker/philox.py. `NV` is always that computation.
  `CPU` is `torch.randn` with a CPU generator per picture.
- **Per picture**: its own generator, seeded with its own seed (seed, seed+1, … in a batch), one draw
  of shape (C, H/f, W/f) — the latent channels and the VAE's scale factor f.
- **Variation seed** (`Variation seed`, `Variation seed strength`): a second draw, from the variation
  seed (+1 per picture), mixed in by A1111's slerp: norms and angles along the height axis (dim 1 of
  a C×H×W draw), a linear mix (written the other way round, as A1111 has it) when the two are almost
  parallel.
- **Seed resize from** WxH: the seed's noise (and the variation's) drawn at that size's latent shape,
  mixed there, then pasted centred into a full-size draw from the same seed (cropped when larger).

After the first draw each picture's generator goes on giving its step noise (A1111's `rng.next()`,
which its k-diffusion samplers' `randn_like` is made to call): `PictureNoise.next()`; with ENSD the
generators are first reseeded with seed + ENSD. Where the numbers are computed (NV, or GPU without
CUDA) the Philox stream goes on too, as A1111's NV generator does. Samplers that still run through
diffusers' schedulers (DDIM, UniPC, EDM and flow models) take torch generators: the pictures' own
(CPU; GPU on CUDA), CPU generators of the seeds where the noise is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_worker.philox import PhiloxNormal

_LINEAR_BELOW = 0.9995  # A1111: past this mean cosine, slerp is a linear mix


def computed(source: str, device: str) -> bool:
    """Whether this source's numbers are computed (Philox) rather than drawn by torch."""
    return source == "NV" or (source == "GPU" and not device.startswith("cuda"))


def generators(source: str, device: str, seeds: list[int]) -> list[torch.Generator]:
    """Each picture's torch generator, seeded with its seed (on the CUDA device for GPU there)."""
    where = device if source == "GPU" and device.startswith("cuda") else "cpu"
    return [torch.Generator(where).manual_seed(int(seed)) for seed in seeds]


class Stream:
    """One picture's generator: torch's, or the Philox computation; each draw continues it."""

    def __init__(self, source: str, device: str, seed: int) -> None:
        self.source, self.device, self.seed = source, device, int(seed)
        self._philox = PhiloxNormal(seed) if computed(source, device) else None
        self._torch = None if self._philox is not None else generators(source, device, [seed])[0]

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The next draw, on the CPU in float32."""
        if self._philox is not None:
            return torch.from_numpy(self._philox.randn(shape))
        assert self._torch is not None
        return torch.randn(shape, generator=self._torch, device=self._torch.device, dtype=torch.float32).cpu()

    def torch_generator(self) -> torch.Generator:
        """For a diffusers scheduler: this generator, or where it is computed, a CPU one of its seed."""
        return self._torch if self._torch is not None else generators("CPU", self.device, [self.seed])[0]


def first_draw(source: str, device: str, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The first draw from `seed`, on the CPU in float32."""
    return Stream(source, device, seed).draw(shape)


@dataclass
class PictureNoise:
    """The pictures' generators after their first draw: each call to `next` is one step's noise."""

    streams: list[Stream]
    shape: tuple[int, int, int]

    def next(self) -> torch.Tensor:
        return torch.stack([stream.draw(self.shape) for stream in self.streams])

    def torch_generators(self) -> list[torch.Generator]:
        return [stream.torch_generator() for stream in self.streams]


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp of two C x H x W draws: along dim 1, and its linear mix when nearly parallel."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_unit * high_unit).sum(1)
    if dot.mean() > _LINEAR_BELOW:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    sine = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / sine).unsqueeze(1) * low + (
        torch.sin(strength * omega) / sine
    ).unsqueeze(1) * high


def paste_centred(small: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`small` (C x h x w) into the middle of `full` (C x H x W), cropped where it is the larger."""
    out = full.clone()
    dx, dy = (full.shape[2] - small.shape[2]) // 2, (full.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    out[:, ty : ty + h, tx : tx + w] = small[:, sy : sy + h, sx : sx + w]
    return out


def initial_noise(
    source: str,
    device: str,
    shape: tuple[int, int, int],
    seeds: list[int],
    subseeds: list[int] | None = None,
    subseed_strength: float = 0.0,
    resize_from: tuple[int, int] | None = None,
    scale: int = 8,
    ensd: int = 0,
) -> tuple[torch.Tensor, PictureNoise]:
    """The pictures' starting noise (B x C x H x W, float32 on the CPU) and their generators, from
    which the sampler then draws its step noise. `resize_from`: (width, height) in pixels; `scale`:
    the VAE's scale factor; `ensd`: A1111's eta noise seed delta, the generators then reseeded with
    seed + ensd."""
    own = [Stream(source, device, seed) for seed in seeds]
    drawn_shape = shape if not resize_from else (shape[0], resize_from[1] // scale, resize_from[0] // scale)
    pictures = []
    for index, (seed, stream) in enumerate(zip(seeds, own, strict=True)):
        noise = stream.draw(shape) if drawn_shape == shape else first_draw(source, device, seed, drawn_shape)
        if subseeds is not None and subseed_strength:
            variation = first_draw(source, device, subseeds[index] if index < len(subseeds) else 0, drawn_shape)
            noise = slerp(subseed_strength, noise, variation)
        if drawn_shape != shape:
            noise = paste_centred(noise, stream.draw(shape))
        pictures.append(noise)
    if ensd:
        own = [Stream(source, device, (seed + ensd) % 2**64) for seed in seeds]
    return torch.stack(pictures), PictureNoise(own, shape)
