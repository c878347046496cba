"""One module per model family (diffusers' way): sd.py (SD1, SD2, SDXL), flux.py, sd3.py, z_image.py,
chroma.py, qwen_image.py, flux2.py, with what the flow families share in flow.py and the contract in
base.py.

A new family is a module with a `Family` subclass — its pipeline build, prompt encoding, call
arguments, preview map and what it refuses — and a row in FAMILIES (and in common/families.py,
which says what the bot knows of it).
"""

from __future__ import annotations

from gpu_worker.families.base import Family
from gpu_worker.families.chroma import CHROMA
from gpu_worker.families.flux import FLUX
from gpu_worker.families.flux2 import FLUX2
from gpu_worker.families.qwen_image import QWEN_IMAGE
from gpu_worker.families.sd import SD1, SD2, SDXL
from gpu_worker.families.sd3 import SD3
from gpu_worker.families.z_image import Z_IMAGE

FAMILIES: dict[str, Family] = {family.name: family for family in (SD1, SD2, SDXL, FLUX, SD3, Z_IMAGE, CHROMA, QWEN_IMAGE, FLUX2)}
