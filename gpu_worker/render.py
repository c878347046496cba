"""Final images: PNG with the A1111 `parameters` text chunk, so A1111 and Civitai read them back."""

from __future__ import annotations

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def png_with_infotext(image: Image.Image, infotext: str) -> bytes:
    return png_with_texts(image, {"parameters": infotext})


def png_with_texts(image: Image.Image, texts: dict[str, str]) -> bytes:
    """A PNG with these text chunks: `parameters`, and A1111's extras tab writes `postprocessing`."""
    info = PngInfo()
    for key, text in texts.items():
        info.add_text(key, text)  # tEXt when Latin-1 encodable, iTXt otherwise (as A1111)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
