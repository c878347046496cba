"""Uploaded pictures are hostile input (bot/images/uploads.py); and how an input meets a job's size."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from bot.images.uploads import MAX_JPEG_SCANS, UploadError, jpeg_scans, read_upload, sniff
from gpu_worker.init_images import prepare_init
from tests.hostile_files import scan_bomb_jpeg


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width × height` (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_become_plain_rgb_png(fmt: str) -> None:
    upload = read_upload(encoded(Image.new("RGB", (40, 30), (10, 200, 30)), fmt))
    image = Image.open(io.BytesIO(upload.png))
    assert (image.format, image.mode, image.size, (upload.width, upload.height)) == ("PNG", "RGB", (40, 30), (40, 30))
    assert not image.info.get("parameters") and len(upload.sha256) == 64


def test_transparency_is_flattened_on_white_and_exif_orientation_applied() -> None:
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert Image.open(io.BytesIO(read_upload(encoded(clear, "PNG")).png)).getpixel((4, 4)) == (255, 255, 255)
    tall = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upload = read_upload(encoded(tall, "JPEG", exif=exif.tobytes()))
    assert (upload.width, upload.height) == (10, 20)


def bad_header_crc() -> bytes:
    data = bytearray(encoded(Image.new("RGB", (8, 8), "red"), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a" + b"\0" * 64, "not a PNG, JPEG or WebP"),
        (b"#!/bin/sh\nrm -rf /\n", "not a PNG, JPEG or WebP"),
        (png_claiming(100_000, 100_000), "at most 16.8 megapixels"),
        (png_claiming(5000, 5000), "5000×5000; at most 16.8 megapixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "cannot be read"),
        (encoded(Image.new("RGB", (64, 64)), "JPEG")[:200], "cannot be read"),
        (scan_bomb_jpeg(1024, 3000), "more than 64 progressive scans"),  # cheap to send, minutes to decode
        (bad_header_crc(), r"cannot be read \(cannot identify image file\)$"),  # no object address in it
    ],
)
def test_hostile_uploads_are_refused_in_one_line(data: bytes, message: str) -> None:
    with pytest.raises(UploadError, match=message) as refused:
        read_upload(data)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "bomb",
    [png_claiming(100_000, 100_000), png_claiming(5000, 5000), scan_bomb_jpeg(1024, 3000)],
    ids=["png 10 gigapixels", "png 25 megapixels", "jpeg 3000 scans"],
)
def test_a_bomb_is_refused_from_its_header_and_never_decoded(bomb: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the machine's speed: the refusal comes before any pixel is decoded."""
    decoded: list[object] = []
    real_load = ImageFile.ImageFile.load

    def load(image: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        decoded.append(image)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    read_upload(encoded(Image.new("RGB", (8, 8)), "PNG"))
    assert decoded, "the probe must see an ordinary picture decoded"
    decoded.clear()
    with pytest.raises(UploadError):
        read_upload(bomb)
    assert decoded == []


def test_the_size_limit_comes_before_anything_is_read() -> None:
    with pytest.raises(UploadError, match="the limit is 1 MB"):
        read_upload(b"\x89PNG" + bytes(2 << 20), max_bytes=1 << 20)
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "WEBP"


def test_resize_modes_as_a1111_names_them() -> None:
    # A wide picture: left half red, right half blue, onto a square.
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (100, 0, 200, 100))
    png = encoded(wide, "PNG")
    stretched = prepare_init(png, 64, 64, "resize")
    assert stretched.getpixel((5, 32)) == (255, 0, 0) and stretched.getpixel((60, 32)) == (0, 0, 255)
    cropped = prepare_init(png, 64, 64, "crop")  # covers the square, the middle kept: half red, half blue
    assert cropped.size == (64, 64) and cropped.getpixel((2, 32))[0] > 200 and cropped.getpixel((61, 32))[2] > 200
    filled = prepare_init(png, 64, 64, "fill")  # fits inside; bands above and below from its edge rows
    assert filled.size == (64, 64) and filled.getpixel((2, 1))[0] > 200 and filled.getpixel((61, 62))[2] > 200


async def test_kept_inputs_are_capped_least_recently_used_first(tmp_path) -> None:
    import os

    from bot.images.inputs import InputStore
    from common.errors import EaselError

    store = InputStore(tmp_path / "inputs")
    names = [f"{i:064x}" for i in range(4)]
    for age, name in enumerate(names):
        await store.put(name, bytes(1000))
        os.utime(store.folder / f"{name}.png", ns=(age * 10**9, age * 10**9))  # written in this order
    await store.get(names[0])  # used again: now the most recent
    store.max_bytes = 2500
    await store.put(f"{9:064x}", bytes(1000))
    kept = sorted(p.name[:64] for p in store.folder.iterdir())
    assert kept == sorted([names[0], f"{9:064x}"])  # 2,000 bytes: the others went, oldest first
    with pytest.raises(EaselError, match="no longer kept"):
        await store.get(names[1])
    with pytest.raises(EaselError, match="not a kept input"):
        await store.get("../../etc/passwd")


def test_scans_are_counted_as_the_decoder_would_meet_them() -> None:
    """Baseline, progressive, restart markers and stuffed bytes: counted from the segments alone."""
    noise = Image.effect_noise((256, 256), 80).convert("RGB")
    assert jpeg_scans(encoded(noise, "JPEG"), MAX_JPEG_SCANS) == 1
    assert jpeg_scans(encoded(noise, "JPEG", progressive=True), MAX_JPEG_SCANS) == 10
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG", progressive=True, restart_marker_blocks=1)
    assert jpeg_scans(buffer.getvalue(), MAX_JPEG_SCANS) == 10
    assert jpeg_scans(scan_bomb_jpeg(64, 100_000), MAX_JPEG_SCANS) == MAX_JPEG_SCANS + 1  # stops counting
    read_upload(buffer.getvalue())  # an ordinary progressive picture is read as before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 100))
def test_counting_scans_never_fails_on_any_bytes(tail: bytes, stop_after: int) -> None:
    """Whatever follows the JPEG signature, counting its scans ends, without an exception, having
    counted no further than one past the limit."""
    assert 0 <= jpeg_scans(b"\xff\xd8" + tail, stop_after) <= stop_after + 1
