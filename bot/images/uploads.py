"""An uploaded picture is hostile input: read it into a plain RGB PNG, or refuse it in one line.

The format is sniffed from the bytes (PNG, JPEG, WebP only; the name and the claimed content type
count for nothing); the pixel count is checked from the header before any pixel is decoded, so a
decompression bomb (a few kB that would decode to gigabytes) costs nothing; EXIF orientation is
applied, transparency flattened onto white (A1111's `img2img_background_color`), and what comes out
is re-encoded, so nothing of the original file (metadata, trailing data) travels further.
PIL runs here: call it off the event loop.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import EaselError

MAX_UPLOAD_BYTES = 20 << 20
MAX_UPLOAD_PIXELS = 4096 * 4096
_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}


class UploadError(EaselError):
    """The picture cannot be used; the message says why."""


@dataclass(frozen=True)
class Upload:
    png: bytes  # plain RGB, re-encoded
    width: int
    height: int
    sha256: str  # of `png`: the identity of the input


def sniff(data: bytes) -> str | None:
    """PNG, JPEG or WEBP by their first bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_upload(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> Upload:
    if len(data) > max_bytes:
        raise UploadError(f"the picture is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    kind = sniff(data)
    if kind is None:
        raise UploadError("that is not a PNG, JPEG or WebP picture")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])  # reads the header only
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise UploadError(
                    f"the picture is {width}×{height}; at most {max_pixels / 1e6:.1f} megapixels are accepted"
                )
            image.load()
            image = ImageOps.exif_transpose(image) or image
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                image = flat
            image = image.convert("RGB")
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(
            f"the picture claims an enormous size; at most {max_pixels / 1e6:.1f} megapixels are accepted"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UploadError(f"the {_FORMATS[kind]} picture cannot be read ({first})") from None
    out = io.BytesIO()
    image.save(out, format="PNG")
    png = out.getvalue()
    return Upload(png, image.width, image.height, hashlib.sha256(png).hexdigest())
