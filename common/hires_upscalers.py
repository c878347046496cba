"""The hires fix's upscalers, by A1111's names (modules/shared.py `latent_upscale_modes`, and the
Lanczos / Nearest picture upscalers). No torch: the bot validates names, the worker runs them."""

from __future__ import annotations

# name -> (torch.nn.functional.interpolate mode, antialias): the latent is enlarged before pass two.
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# name -> PIL resampling: the first pass's picture is enlarged, then encoded again for pass two.
PICTURE_UPSCALERS = {"Lanczos": "LANCZOS", "Nearest": "NEAREST"}
UPSCALERS = (*LATENT_UPSCALERS, *PICTURE_UPSCALERS)


def parse_upscaler(name: str) -> str:
    """The upscaler's A1111 name, whatever its case; ValueError naming the choices."""
    for known in UPSCALERS:
        if known.lower() == name.strip().lower():
            return known
    raise ValueError(f"unknown hires upscaler {name!r}; choose one of {', '.join(UPSCALERS)}")
