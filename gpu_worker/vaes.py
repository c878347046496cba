"""A job's VAE (A1111's "SD VAE"): a VAE file put in place of the checkpoint's own on the cached
pipeline for one batch, and the checkpoint's own put back for the next batch that does not name one.

VAE files are read by diffusers' single-file loader (the LDM layout with or without its
`first_stage_model.` prefix, or diffusers' own), configured as the checkpoint's own VAE is (its
scaling factor and latent statistics come from the checkpoint's family, not the file). A pickled VAE
was vetted by the bot's allow-list reader; diffusers reads it again with `weights_only`. The last few
VAEs stay loaded, by sha256.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from diffusers import AutoencoderKL

from common.bundled import CONFIG_ROOT
from common.protocol import VaeUse, config_parts
from gpu_worker.families.sd_build import named_for_diffusers
from gpu_worker.loaded import LoadedPipeline

RESIDENT = 2  # 80-160 MB each


class VaeError(Exception):
    """A VAE cannot be used; the message says which and why, in one line, for the user."""


class VaeCache:
    def __init__(self, size: int = RESIDENT) -> None:
        self.size = size
        self._vaes: OrderedDict[tuple[str, str], AutoencoderKL] = OrderedDict()

    def apply(self, loaded: LoadedPipeline, use: VaeUse | None) -> None:
        """Make `use` the pipeline's VAE (None: the checkpoint's own) and every pipeline made from it."""
        pipe = loaded.pipeline
        if loaded.own_vae is None:
            loaded.own_vae = pipe.vae
        vae = loaded.own_vae if use is None else self._get(use, loaded)
        if pipe.vae is not vae:
            for each in (pipe, *loaded.derived.values()):
                each.register_modules(vae=vae)

    def _get(self, use: VaeUse, loaded: LoadedPipeline) -> AutoencoderKL:
        key = (use.sha256, loaded.request.pipeline_config or "")
        found = self._vaes.pop(key, None) or self._load(use, loaded)
        self._vaes[key] = found
        while len(self._vaes) > self.size:
            self._vaes.popitem(last=False)
        return found

    def _load(self, use: VaeUse, loaded: LoadedPipeline) -> AutoencoderKL:
        path = Path(use.path)
        if not path.is_file():
            raise VaeError(f"the VAE {use.name} is no longer on disk")
        folder = CONFIG_ROOT / config_parts(loaded.request.pipeline_config)[0]
        try:
            with named_for_diffusers(path, use.format) as readable:
                vae = AutoencoderKL.from_single_file(
                    str(readable), config=str(folder), subfolder="vae", local_files_only=True
                )
        except Exception as e:  # diffusers reports layout problems with many exception types
            raise VaeError(f"the VAE {use.name} cannot be loaded: {type(e).__name__}: {str(e)[:200]}") from None
        # Scaled as this checkpoint's own VAE is: that is the family's (an EDM model's statistics too).
        own = loaded.own_vae.config
        vae.register_to_config(**{k: own[k] for k in ("scaling_factor", "latents_mean", "latents_std") if k in own})
        # In the dtype the checkpoint's own is held in (float32 with EASEL_VAE_PRECISION=full).
        return vae.to(loaded.device, loaded.own_vae.dtype).eval().requires_grad_(False)
