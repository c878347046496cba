"""Pictures are fitted to Discord's upload limit without losing what fits."""

from __future__ import annotations

import io
import os

from PIL import Image

from cogs.utils.attachments import fit_image


def test_pictures_over_the_upload_limit_are_re_encoded_to_fit() -> None:
    noise = Image.frombytes("RGB", (512, 512), os.urandom(512 * 512 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    png = buffer.getvalue()
    assert fit_image(png, len(png)) == (png, "png")  # fits: untouched, parameters kept
    data, extension = fit_image(png, 100_000)
    assert extension == "jpg" and len(data) <= 100_000
    assert Image.open(io.BytesIO(data)).format == "JPEG"
