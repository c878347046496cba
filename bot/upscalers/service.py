"""A picture enlarged on its own, as A1111's Extras tab does it: by an upscaler model or by Lanczos /
Nearest, in a one-shot `python -m gpu_worker upscale` process (torch and the picture check stay out
of the bot).

The size follows A1111's modules/upscaler.py: `scale` times each side, rounded down to a multiple
of 8. The result keeps the picture's own `parameters` text and gains A1111's `postprocessing` text
("Postprocess upscale by: 4, Postprocess upscaler: R-ESRGAN 4x+"), so /pnginfo and A1111's PNG Info
read both.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bot.child_process import OrderProgress, run_order
from bot.images.uploads import MAX_UPLOAD_PIXELS, Upload
from bot.rules.policy import readable_score
from bot.upscalers.registry import UpscalerRegistry
from common.errors import EaselError
from common.hires_upscalers import PICTURE_UPSCALERS
from common.protocol import UpscaleOrder, UpscalerUse, encode_order

log = logging.getLogger(__name__)

MAX_SCALE = 8.0  # A1111's Extras "Resize" slider
MAX_OUTPUT_PIXELS = MAX_UPLOAD_PIXELS  # 4096 × 4096: what Discord can show and a person can upload again
MAX_WAITING = 8  # upscales waiting their turn; past this the service says it is busy


@dataclass(frozen=True)
class Upscaled:
    png: bytes
    width: int
    height: int
    upscaler: str  # as A1111 names it
    scale: float
    postprocessing: str  # the text A1111's Extras tab writes
    seconds: float
    nsfw_score: float | None = None  # the picture check's (gpu_worker/safety.py), run in the upscale process


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111 modules/upscaler.py `Upscaler.upscale`: each side times the scale, down to a multiple of 8."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


def check_scale(width: int, height: int, scale: float, max_pixels: int = MAX_OUTPUT_PIXELS) -> tuple[int, int]:
    """The result's size; EaselError when the scale or the result is out of bounds."""
    if not 1 < scale <= MAX_SCALE:
        raise EaselError(f"the scale must be above 1 and at most {MAX_SCALE:g}, not {scale:g}")
    big_w, big_h = upscaled_size(width, height, scale)
    if big_w * big_h > max_pixels:
        raise EaselError(
            f"{width}x{height} at {scale:g}x would be {big_w}x{big_h}, over the "
            f"{max_pixels / 1e6:.1f}-megapixel limit; choose a smaller scale"
        )
    if big_w < 8 or big_h < 8:
        raise EaselError(f"{width}x{height} at {scale:g}x is too small to upscale")
    return big_w, big_h


class UpscaleService:
    def __init__(self, registry: UpscalerRegistry, max_pixels: int = MAX_OUTPUT_PIXELS) -> None:
        self.registry = registry
        self.max_pixels = max_pixels
        self._turn = asyncio.Semaphore(1)  # one upscale at a time: a model upscale fills the GPU it uses
        self._waiting = 0
        self.last_peak_rss: int | None = None

    async def upscale(
        self,
        upload: Upload,
        parameters: str | None,
        upscaler: str,
        scale: float,
        progress: OrderProgress | None = None,
    ) -> Upscaled:
        """`upload`: the picture as bot/images/uploads.py read it (plain RGB); `parameters`: its A1111
        infotext, which the result keeps."""
        width, height, png = upload.width, upload.height, upload.png
        big_w, big_h = check_scale(width, height, scale, self.max_pixels)
        choice = await self.registry.resolve(upscaler, latent=False)
        name = choice.name if isinstance(choice, UpscalerUse) else choice
        postprocessing = f"Postprocess upscale by: {scale:g}, Postprocess upscaler: {name}"
        texts = {"postprocessing": postprocessing}
        if parameters:
            texts = {"parameters": parameters} | texts
        if self._waiting >= MAX_WAITING:
            raise EaselError("the upscaler is busy with other pictures; try again in a minute")
        self._waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self._waiting -= 1
        try:
            started = time.perf_counter()
            model = choice if isinstance(choice, UpscalerUse) else None
            resample = "LANCZOS" if model else PICTURE_UPSCALERS[str(choice)]
            data, report = await self._run(png, model, resample, (big_w, big_h), texts, progress)
        finally:
            self._turn.release()
        seconds = time.perf_counter() - started
        log.info("upscale %dx%d -> %dx%d by %s in %.1f s", width, height, big_w, big_h, name, seconds)
        score = readable_score(report.get("nsfw_score"))  # none, or unreadable: the verdict fails closed
        if score is None:
            log.warning("upscale by %s: no readable picture-check score came back; treated as over the threshold", name)
        return Upscaled(data, big_w, big_h, name, scale, postprocessing, seconds, score)

    async def _run(
        self,
        png: bytes,
        model: UpscalerUse | None,
        resample: str,
        size: tuple[int, int],
        texts: dict[str, str],
        progress: OrderProgress | None,
    ) -> tuple[bytes, dict]:
        """In a one-shot worker process, Lanczos too: the picture check runs there, not in the bot."""
        with tempfile.TemporaryDirectory(prefix="easel-upscale-") as folder:
            source, out = Path(folder) / "in.png", Path(folder) / "out.png"
            await asyncio.to_thread(source.write_bytes, png)
            order = UpscaleOrder(str(source), str(out), model, size[0], size[1], texts, resample)
            report = await run_order("upscale", encode_order(order), progress)
            self.last_peak_rss = report.get("peak_rss_bytes")
            return await asyncio.to_thread(out.read_bytes), report
