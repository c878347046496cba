"""The model families Easel runs, and what both sides know of each: one row per family.

The worker's side of a family (its pipeline, prompts, call arguments) is its module in
gpu_worker/families/; this table is what the bot needs to offer, check and describe it. A new family
is a row here and a module there (tests hold the two lists equal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # the registry's and the protocol's name: sd1, sd2, sdxl, flux, sd3, z-image, chroma, qwen-image, flux2
    label: str  # what people read in menus and the catalog: "SD 1.x"
    short_label: str  # a LoRA's or an embedding's base, as A1111 users write it: "SD1.x"
    native_size: int  # the side of its native square: what "1:1" means
    latent_channels: int  # its VAE's: a VAE file fits when they match
    flow: bool = False  # denoises by flow matching (a transformer, no UNet): its own samplers and limits
    # The samplers it offers, when not every one of its kind (common/samplers.py FLOW_SAMPLERS for a
    # flow model): Z-Image's pipeline sets its own sigmas, which only flow-matching Euler takes.
    samplers: tuple[str, ...] | None = None
    # img2img (and Vary) and the hires fix: pipelines that start from a picture (inpainting, which
    # every family has, is a pipeline of its own)
    from_picture: bool = True
    vae_layout: str = "2d"  # the VAE files it takes: "2d" (SD's, FLUX.1's) or "wan" (Wan 2.1's video VAE, Qwen-Image's)

    @property
    def latent_grid(self) -> int:
        """Pixels per latent cell a size must be a multiple of: a flow model's latents come in 2x2 patches."""
        return 16 if self.flow else 8


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("sd1", "SD 1.x", "SD1.x", 512, 4),
        Family("sd2", "SD 2.x", "SD2.x", 768, 4),
        Family("sdxl", "SDXL", "SDXL", 1024, 4),
        Family("flux", "Flux", "Flux", 1024, 16, flow=True),
        Family("sd3", "SD 3.x", "SD3", 1024, 16, flow=True),
        Family("z-image", "Z-Image", "Z-Image", 1024, 16, flow=True, samplers=("Euler",)),
        # Chroma's pipeline sets its own sigmas too
        Family("chroma", "Chroma", "Chroma", 1024, 16, flow=True, samplers=("Euler",)),
        Family(
            "qwen-image", "Qwen-Image", "Qwen-Image", 1328, 16, flow=True, samplers=("Euler",), vae_layout="wan"
        ),
        # FLUX.2 [klein]: 32-channel latents; its pipeline sets its own sigmas (an empirical shift)
        Family("flux2", "FLUX.2", "FLUX.2", 1024, 32, flow=True, samplers=("Euler",), from_picture=False),
    )
}
SUPPORTED_FAMILIES = tuple(FAMILIES)
FLOW_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.flow)
