"""Fit pictures under Discord's upload limit (the interaction's attachment_size_limit).

A PNG that fits is sent as it is (it carries the A1111 parameters). One that does not is re-encoded
as a high-quality JPEG and, if still too big, scaled down until it fits; the caller says so.
"""

from __future__ import annotations

import io

from PIL import Image


def fit_image(png: bytes, limit: int) -> tuple[bytes, str]:
    """(data, extension); unchanged PNG when it fits. Runs PIL: call it off the event loop."""
    if len(png) <= limit:
        return png, "png"
    image = Image.open(io.BytesIO(png)).convert("RGB")
    scale = 1.0
    while True:
        frame = (
            image
            if scale == 1.0
            else image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
        )
        buffer = io.BytesIO()
        frame.save(buffer, format="JPEG", quality=92)
        if buffer.tell() <= limit or frame.width <= 64:
            return buffer.getvalue(), "jpg"
        scale *= 0.8
