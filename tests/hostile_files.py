"""Hostile and careless checkpoint files, built byte by byte: the fuzz corpus for tests and bench/.

Each builder writes a small file that attacks one class of weakness: unbounded nesting, a BUILD
on a shared stand-in, decompression bombs, views that expand data, JSON that costs far more than its
size. Pickles are assembled from opcodes (pickletools names them) so nothing here needs torch.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

PROTO2 = b"\x80\x02"


def text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])  # BININT1
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + bytes([len(raw)]) + raw  # LONG1
    return b"\x8b" + struct.pack("<i", len(raw)) + raw  # LONG4


def tuple_of(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK … TUPLE


def storage_pid(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    return tuple_of(text("storage"), f"ctorch\n{storage}\n".encode(), text(key), text("cpu"), integer(numel))


def rebuild_tensor(key: str, numel: int, offset: bytes, size: bytes, stride: bytes) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()) as opcodes."""
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n"
        + b"("
        + storage_pid(key, numel)
        + b"Q"  # BINPERSID
        + offset
        + size
        + stride
        + b"\x89"  # NEWFALSE
        + b"ccollections\nOrderedDict\n)R"
        + b"tR"
    )


def state_dict(*entries: tuple[str, bytes]) -> bytes:
    """A pickle of {name: value, …} where each value is given as opcodes."""
    body = b"".join(text(name) + value + b"s" for name, value in entries)  # SETITEM each
    return PROTO2 + b"}" + body + b"."


def torch_zip(path: Path, pickle: bytes, storages: dict[str, bytes] | None = None, *, compress: bool = False) -> Path:
    """A torch.save-style zip archive: archive/data.pkl, archive/version, archive/data/N."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", pickle)
        archive.writestr("archive/version", b"3\n")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path


def safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


# --- pickles ---------------------------------------------------------------------------------------


def deep_tuple(depth: int = 200_000) -> bytes:
    return PROTO2 + b")" + b"\x85" * depth + b"."  # EMPTY_TUPLE, then TUPLE1 again and again


def _nested_lists(depth: int) -> bytes:
    out = b"]"  # the innermost list
    for _ in range(depth):
        out = b"]" + out + b"a"  # EMPTY_LIST, <inner>, APPEND
    return out + b"."


def deep_list_by_memo(depth: int = 200) -> bytes:
    """Lists memoised first, then each appended into the next in reverse order: depth only at the end."""
    out = PROTO2 + b"]" + b"".join(b"]\x94" for _ in range(depth)) + b"0" * depth  # MEMOIZE each, POP each
    for i in range(depth - 1, 0, -1):
        out += b"h" + bytes([i % 256]) if i < 256 else b"j" + struct.pack("<I", i)  # GET list i
        out += (b"h" + bytes([i - 1]) if i - 1 < 256 else b"j" + struct.pack("<I", i - 1)) + b"a0"
    return out + b"."


def self_containing_list() -> bytes:
    return PROTO2 + b"]q\x00h\x00a."  # l = []; l.append(l)


def build_on_storage_type() -> bytes:
    """BUILD on the FloatStorage stand-in, trying to make every later F32 tensor read as BF16."""
    attack = b"ctorch\nFloatStorage\n" + b"}" + text("dtype") + text("BF16") + b"s" + b"b"  # BUILD
    return state_dict(("x", attack))


def build_on_global(module: str = "collections", name: str = "OrderedDict") -> bytes:
    attack = f"c{module}\n{name}\n".encode() + b"}" + text("items") + b"N" + b"sb"
    return state_dict(("x", attack))


def deep_dict_key(depth: int = 60) -> bytes:
    return PROTO2 + b"}" + b")" + b"\x85" * depth + b"N" + b"s."


def huge_integer(digits: int = 5000) -> bytes:
    return state_dict(("n", integer(10**digits)))


def inflating_pickle(size: int = 512 << 20) -> bytes:
    return PROTO2 + b"}" + b"N0" * (size // 2) + b"."  # NONE, POP, again and again


def tensor_pickle(
    numel: int, offset: bytes | None = None, size: bytes | None = None, stride: bytes | None = None
) -> bytes:
    return state_dict(
        (
            "w",
            rebuild_tensor(
                "0",
                numel,
                offset if offset is not None else integer(0),
                size if size is not None else tuple_of(integer(numel)),
                stride if stride is not None else tuple_of(integer(1)),
            ),
        )
    )


# --- whole files ----------------------------------------------------------------------------------


_FOUR = bytes(16)

# name -> (builder, a phrase the one-line refusal must contain)
HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "deep_tuple.ckpt": (lambda p: torch_zip(p, deep_tuple(), compress=True), "decompression bomb"),
    "deep_tuple_stored.ckpt": (lambda p: torch_zip(p, deep_tuple()), "nests objects more than"),
    "deep_list.ckpt": (lambda p: torch_zip(p, _nested_lists(2000)), "nests objects more than"),
    "deep_list_memo.pt": (lambda p: torch_zip(p, deep_list_by_memo()), "after placing it in another"),
    "deep_raw_pickle.pt": (lambda p: _write(p, deep_tuple(30_000)), "nests objects more than"),
    "self_list.ckpt": (lambda p: torch_zip(p, self_containing_list()), "inside itself"),
    "build_storage.ckpt": (lambda p: torch_zip(p, build_on_storage_type()), "with BUILD"),
    "build_global.ckpt": (lambda p: torch_zip(p, build_on_global()), "with BUILD"),
    "deep_key.ckpt": (lambda p: torch_zip(p, deep_dict_key()), "as a dict key"),
    "huge_int.ckpt": (lambda p: torch_zip(p, huge_integer()), "integer over 128 bits"),
    "pickle_bomb.ckpt": (lambda p: torch_zip(p, inflating_pickle(32 << 20), compress=True), "decompression bomb"),
    "storage_bomb.ckpt": (
        lambda p: torch_zip(p, tensor_pickle(16 << 20), {"0": bytes(64 << 20)}, compress=True),
        "decompression bomb",
    ),
    "stride0.ckpt": (
        lambda p: torch_zip(
            p, tensor_pickle(1, size=tuple_of(integer(1 << 27)), stride=tuple_of(integer(0))), {"0": bytes(4)}
        ),
        "views that repeat data",
    ),
    "negative_shape.ckpt": (
        lambda p: torch_zip(p, tensor_pickle(4, size=tuple_of(integer(-4))), {"0": _FOUR}),
        "invalid size",
    ),
    "float_offset.ckpt": (
        lambda p: torch_zip(p, tensor_pickle(4, offset=b"G" + struct.pack(">d", 0.5)), {"0": _FOUR}),
        "invalid storage offset",
    ),
    "string_stride.ckpt": (
        lambda p: torch_zip(p, tensor_pickle(4, stride=tuple_of(text("1"))), {"0": _FOUR}),
        "invalid stride",
    ),
    "past_storage.ckpt": (
        lambda p: torch_zip(p, tensor_pickle(4, offset=integer(3), size=tuple_of(integer(4))), {"0": _FOUR}),
        "past the end of its storage",
    ),
    "text.safetensors": (lambda p: _write(p, b"this is a text file, not a model\n" * 4), "not a safetensors file"),
    "deep_json.safetensors": (
        lambda p: safetensors(p, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "100,001 JSON objects and lists for 0 tensors",  # counted before parsing (it once nested too deeply)
    ),
    "long_int.safetensors": (
        lambda p: safetensors(
            p, b'{"a":{"dtype":"F32","shape":[' + b"9" * 4300 + b'],"data_offsets":[0,4]}}', _FOUR[:4]
        ),
        "4300-digit number",
    ),
    "many_tensors.safetensors": (lambda p: _many_tensors(p, 150_000), "over the limit of 100,000"),
    "many_dims.safetensors": (
        lambda p: safetensors(
            p,
            b'{"a":{"dtype":"F32","shape":[' + b",".join([b"99999999999"] * 64) + b'],"data_offsets":[0,4]}}',
            _FOUR[:4],
        ),
        "at most 32",
    ),
    "nan.safetensors": (
        lambda p: safetensors(p, b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', _FOUR[:4]),
        "NaN",
    ),
    "many_metadata_keys.safetensors": (lambda p: _many_metadata_keys(p, 300_000), "metadata may have at most 1,000 keys"),
    "empty_objects.safetensors": (
        lambda p: safetensors(p, b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"x":[' + b"{}," * 500_000 + b'{}]}', _FOUR[:4]),
        "500,006 JSON objects and lists for 1 tensors",
    ),
    "surrogate_name.safetensors": (
        lambda p: safetensors(p, b'{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', _FOUR[:4]),
        "not valid Unicode",
    ),
}


def hostile_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every hostile file, written into `folder`: its path and the phrase its refusal must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: (make(folder / name), reason) for name, (make, reason) in HOSTILE.items()}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _many_metadata_keys(path: Path, count: int) -> Path:
    keys = ",".join(f'"k{i}":""' for i in range(count))
    header = '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"__metadata__":{' + keys + "}}"
    return safetensors(path, header.encode(), bytes(4))


def _many_tensors(path: Path, count: int) -> Path:
    parts = [f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(count)]
    return safetensors(path, ("{" + ",".join(parts) + "}").encode(), bytes(count))


def big_metadata_safetensors(path: Path, header_bytes: int) -> Path:
    """A valid file whose header is mostly one metadata string (kohya's tag frequencies can be large)."""
    base = {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    overhead = len(json.dumps({**base, "__metadata__": {"ss_tag_frequency": ""}}).encode())
    header = {**base, "__metadata__": {"ss_tag_frequency": "a" * max(0, header_bytes - overhead)}}
    return safetensors(path, json.dumps(header).encode(), bytes(4))


async def scan_hostile_folder(tmp_path: Path, folder_name: str, registry_class) -> tuple[dict[str, tuple[Path, str]], object]:
    """Every hostile file copied into models/`folder_name` and scanned by a fresh `registry_class`:
    (the files made, the scan's report)."""
    import shutil

    from bot.db import open_database

    folder = tmp_path / "models" / folder_name
    folder.mkdir(parents=True)
    made = hostile_checkpoints(tmp_path / "made")
    for name, (path, _) in made.items():
        shutil.copy(path, folder / name)
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        return made, await registry_class(db, tmp_path / "models").scan()
    finally:
        await db.close()


def _conv_names(path: Path, names: list[str]) -> Path:
    """A safetensors file of 1×1×1×1 convolution weights under the names given (a PReLU's one
    weight for the compact network's body.1)."""
    entries = {
        n: {"dtype": "F32", "shape": [1] if n == "body.1.weight" else [1, 1, 1, 1], "data_offsets": [4 * i, 4 * i + 4]}
        for i, n in enumerate(names)
    }
    return safetensors(path, json.dumps(entries).encode(), bytes(4 * len(names)))


_RRDB_START = ["model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"]
# Layer numbers inside tensor names, which upscaler detection once turned into list lengths: the
# file name, and the phrase its one-line refusal must contain.
UPSCALER_NUMBERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "rrdb_30m.safetensors": (lambda p: _conv_names(p, [*_RRDB_START, "model.30000004.weight"]), "not a layout we know"),
    "rrdb_2g.safetensors": (lambda p: _conv_names(p, [*_RRDB_START, "model.2000000002.weight"]), "not a layout we know"),
    "rrdb_5000_digits.safetensors": (lambda p: _conv_names(p, [*_RRDB_START, f"model.{'9' * 5000}.weight"]), "not a layout we know"),
    "rrdb_blocks.safetensors": (
        lambda p: _conv_names(p, [*_RRDB_START, "model.1.sub.99999999.RDB1.conv1.0.weight", "model.10.weight"]),
        "an RRDB upscaler without model.3.weight",
    ),
    "rrdb_upconvs.safetensors": (lambda p: _conv_names(p, [*_RRDB_START, "model.997.weight"]), "331 upsampling layers"),
    "compact_2g.safetensors": (
        lambda p: _conv_names(p, ["body.0.weight", "body.1.weight", "body.2000000000.weight"]),
        "not numbered conv, PReLU",
    ),
}


def scan_bomb_jpeg(size: int = 1024, repeats: int = 3000) -> bytes:
    """A progressive JPEG whose last scan is repeated `repeats` times: small to send, and each repeat
    makes the decoder go over the whole picture again."""
    import io

    from PIL import Image

    picture = Image.new("RGB", (size, size), (120, 80, 200))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last_scan = data.rfind(b"\xff\xda")
    scan = data[last_scan:-2]  # the last SOS segment and its data, up to EOI
    return data[:-2] + scan * repeats + b"\xff\xd9"
