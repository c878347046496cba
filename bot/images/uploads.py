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
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import EaselError

MAX_UPLOAD_BYTES = 20 << 20
MAX_UPLOAD_PIXELS = 4096 * 4096
# A progressive JPEG refines the whole picture once per scan: cheap to send (a scan can be a few
# bytes), dear to decode (thousands of scans over 4096² took minutes of CPU). Encoders write 1
# (baseline) to about 10 (libjpeg's progression); libjpeg-turbo's own tools stop at 500.
MAX_JPEG_SCANS = 64
_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


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


def jpeg_scans(data: bytes, stop_after: int) -> int:
    """How many scans (SOS segments) a JPEG has, counting no further than `stop_after` + 1: its
    segments walked by their lengths, the entropy-coded data after each scan skipped with bytes.find
    (linear in the file's size, nothing decoded). A file that ends or breaks early is left to the
    decoder, which says what is wrong."""
    scans, at, end = 0, 2, len(data)
    while at + 4 <= end and scans <= stop_after:
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            at += 2
            continue
        if marker == 0xD9:  # end of image
            break
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker != 0xDA:
            continue
        scans += 1
        while (at := data.find(b"\xff", at)) >= 0 and at + 1 < end:  # the scan's data: to the next marker
            following = data[at + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:  # a stuffed 0xFF, or a restart marker
                at += 2
            elif following == 0xFF:
                at += 1
            else:
                break
        if at < 0:
            break
    return scans


def read_upload(data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS) -> Upload:
    if len(data) > max_bytes:
        raise UploadError(f"the picture is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    kind = sniff(data)
    if kind is None:
        raise UploadError("that is not a PNG, JPEG or WebP picture")
    if kind == "JPEG" and jpeg_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise UploadError(
            f"the JPEG picture has more than {MAX_JPEG_SCANS} progressive scans (each one decodes the whole "
            "picture again); save it again as an ordinary JPEG or a PNG"
        )
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
        first = _OBJECT_REPR.sub("", first).strip()  # "cannot identify image file <_io.BytesIO object at 0x…>"
        raise UploadError(f"the {_FORMATS[kind]} picture cannot be read ({first})") from None
    out = io.BytesIO()
    image.save(out, format="PNG")
    png = out.getvalue()
    return Upload(png, image.width, image.height, hashlib.sha256(png).hexdigest())
