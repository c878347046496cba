"""A1111 infotext in pictures from anyone: found (PNG text chunk, JPEG/WebP EXIF UserComment), read
into prompt, negative prompt and parameters, and turned into a job's options.

Followed (facts, not code) from AUTOMATIC1111/stable-diffusion-webui: modules/images.py
`read_info_from_image` (PNG `parameters`; EXIF UserComment written by piexif as "UNICODE\\0" and
UTF-16) and modules/infotext_utils.py `parse_generation_parameters` (the last line's `key: value`
pairs by its regex, a quoted value JSON-decoded, "WxH" sizes). Everything in it is untrusted: bounded
in length, decoded defensively, and only known keys are used. PIL runs here: call it off the loop.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

from PIL import Image

from bot.errors import EaselError
from bot.images.uploads import Upload, UploadError, read_upload, sniff
from bot.untrusted import clean_text, load_json
from gpu_worker.infotext import build_infotext

MAX_INFOTEXT_CHARS = 20_000
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769


@dataclass
class Infotext:
    prompt: str
    negative: str
    params: dict[str, str] = field(default_factory=dict)
    postprocessing: str = ""  # A1111's Extras text ("Postprocess upscale by: 2, …"), shown, never run

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"prompt": self.prompt, "negative": self.negative, "params": self.params}
        return out | ({"postprocessing": self.postprocessing} if self.postprocessing else {})


@dataclass(frozen=True)
class PictureTexts:
    """A picture read as any upload is, with the A1111 texts it carries."""

    upload: Upload
    parameters: str | None  # A1111's infotext (PNG text chunk, or JPEG/WebP EXIF UserComment)
    postprocessing: str | None  # A1111's Extras text (PNG `postprocessing`)


def read_picture(data: bytes) -> PictureTexts:
    """The picture is checked and decoded once (format by content, pixel count from the header);
    UploadError when it is no safe picture. Metadata that PIL cannot read raises what PIL raises."""
    upload = read_upload(data)  # refuses what is not a safe picture, in one line
    image = Image.open(io.BytesIO(data), formats=[sniff(data) or "PNG"])  # the header and text chunks
    text = image.info.get("parameters")
    if not isinstance(text, str):
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
        text = _user_comment(comment) if isinstance(comment, bytes) else None
    extras = image.info.get("postprocessing")
    return PictureTexts(
        upload,
        clean_text(text[:MAX_INFOTEXT_CHARS]) if text else None,
        clean_text(extras[:1000]).strip() or None if isinstance(extras, str) else None,
    )


def _user_comment(raw: bytes) -> str | None:
    head, body = raw[:8], raw[8:]
    if head == b"UNICODE\0":
        little = len(body) >= 2 and body[0] != 0 and body[1] == 0  # an ASCII first letter tells the order
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace").rstrip("\0")
    if head.startswith(b"ASCII"):
        return body.decode("ascii", errors="replace").rstrip("\0")
    return raw.decode("utf-8", errors="replace").rstrip("\0") or None


def parse_infotext(text: str) -> Infotext:
    """Prompt, negative prompt and parameters as A1111 reads them ("WxH" kept whole here)."""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                decoded = load_json(value)
                value = decoded if isinstance(decoded, str) else value
            except ValueError:
                pass
        params[key.strip()] = value.strip()
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), params)


def read_picture_parameters(data: bytes) -> Infotext:
    """The parameters a picture carries; UploadError when it is no picture, EaselError when it has none."""
    try:
        texts = read_picture(data)
    except UploadError:
        raise
    except Exception as e:  # a picture whose metadata PIL cannot read is one without parameters
        raise EaselError(f"the picture's metadata cannot be read ({type(e).__name__})") from None
    if not texts.parameters:
        raise EaselError("this picture carries no generation parameters (no A1111 infotext)")
    info = parse_infotext(texts.parameters)
    info.postprocessing = texts.postprocessing or ""
    return info


def render_infotext(info: Infotext) -> str:
    """The reading written back as A1111 infotext (what /pnginfo keeps for "Make this here")."""
    return build_infotext(info.prompt, info.negative, dict(info.params))


def render_reading(info: Infotext) -> str:
    """What /pnginfo and `pnginfo` show: the infotext, then A1111's Extras text when there is one."""
    return render_infotext(info) + (f"\n\n{info.postprocessing}" if info.postprocessing else "")


def size_of(params: dict[str, str]) -> tuple[int, int] | None:
    match = _SIZE.match(params.get("Size", ""))
    return (int(match[1]), int(match[2])) if match else None
