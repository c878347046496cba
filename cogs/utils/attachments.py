"""Pictures in and out of Discord.

Out: fit pictures under Discord's upload limit (the interaction's attachment_size_limit). A PNG that
fits is sent as it is (it carries the A1111 parameters). One that does not is re-encoded as a
high-quality JPEG and, if still too big, scaled down until it fits; the caller says so.
In: an uploaded picture's bytes, after checks that cost nothing (its size and declared type); what
the bytes are is decided by bot/images/uploads.py.
"""

from __future__ import annotations

import io

import discord
from PIL import Image

from bot.images.uploads import MAX_UPLOAD_BYTES, UploadError


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


async def read_attachment(attachment: discord.Attachment) -> bytes:
    """The attachment's bytes, refused before any download when it is too big or not a picture."""
    if attachment.size > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"the picture is {attachment.size / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB"
        )
    if attachment.content_type and not attachment.content_type.startswith("image/"):
        raise UploadError(f"{attachment.filename} is not a picture ({attachment.content_type})")
    try:
        return await attachment.read()
    except discord.HTTPException as e:
        raise UploadError(f"the picture could not be downloaded from Discord ({e.status})") from None
