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

from bot.images.uploads import Upload, UploadError, read_upload, sniff
from bot.untrusted import clean_text, load_json
from common.errors import EaselError
from common.infotext import TEMPLATE_KEYS, build_infotext

MAX_INFOTEXT_CHARS = 20_000
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
    every = text.strip().split("\n")
    templates: dict[str, str] = {}  # the Dynamic Prompts extension's lines after the parameters
    while len(every) > 1 and every[-1].startswith(tuple(f"{key}: " for key in TEMPLATE_KEYS)):
        key, _, value = every.pop().partition(": ")
        templates[key] = _unquoted(value.strip())
    *lines, last = every
    pairs = parameter_pairs(last)
    if len(pairs) < 3:
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
    for key, value in pairs if last else []:
        params[key.strip()] = _unquoted(value).strip()
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), params | templates)


def _unquoted(value: str) -> str:
    if len(value) > 1 and value[0] == value[-1] == '"':
        try:
            decoded = load_json(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def _is_key_char(ch: str) -> bool:
    return ch.isalnum() or ch in " _-/"


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def parameter_pairs(line: str) -> list[tuple[str, str]]:
    """The `key: value` pairs of an infotext's last line, exactly as A1111's pattern
    `\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)` finds them, in one pass: the
    pattern backtracks quadratically on a long line without a colon (seconds for 20,000 characters,
    holding the GIL), this reads each character a bounded number of times."""
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(line)
    while (colon := line.find(":", pos)) >= 0:
        start = colon
        while start > pos and _is_key_char(line[start - 1]):  # the run of key characters before the colon
            start -= 1
        while start < colon and not _is_word_char(line[start]):  # the key begins with a word character
            start += 1
        if colon - start < 2:  # one character is no key
            pos = colon + 1
            continue
        value_at = colon + 1
        while value_at < end and line[value_at].isspace():
            value_at += 1
        closing = _closing_quote(line, value_at)
        if closing is not None and (closing + 1 == end or line[closing + 1] == ","):
            value, pos = line[value_at : closing + 1], closing + 2
        else:
            comma = line.find(",", value_at)
            comma = end if comma < 0 else comma
            value, pos = line[value_at:comma], comma + 1
        pairs.append((line[start:colon], value))
    return pairs


def _closing_quote(line: str, at: int) -> int | None:
    """Where a quoted value starting at `at` ends (a backslash escapes the next character), if it is one."""
    if at >= len(line) or line[at] != '"':
        return None
    i = at + 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
        elif line[i] == '"':
            return i if i > at + 1 else None
        else:
            i += 1
    return None


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
