"""GGUF transformers (city96's ComfyUI-GGUF files): the bounded header reader against the `gguf`
package's own, hostile headers refused in one line, the Q4_K blocks our tiny maker writes read back
by two independent dequantisers, and each flow family drawn from its GGUF file through the real
runner with its weights kept quantised, its LoRAs on top, and by the command line's worker."""

from __future__ import annotations

import io
import struct
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.errors import CheckpointFileError
from common.gguf_header import GGML_TYPES, read_gguf_header
from common.protocol import ComponentUse, JobDone, JobPart, LoadRequest, LoraUse, RunBatch
from common.tensors import GGML_BLOCKS
from gpu_worker.testing.quantise import q4_k, quantise_file
from tests.a1111_infotext import parse_generation_parameters
from tests.helpers import in_process_runner

FAMILY_PARTS = {
    "flux": (("clip_l", "text_encoders/clip_l.safetensors"), ("t5xxl", "text_encoders/t5xxl_fp16.safetensors"), ("vae", "VAE/ae.safetensors")),
    "chroma": (("t5xxl", "text_encoders/t5xxl_fp16.safetensors"), ("vae", "VAE/ae.safetensors")),
    "z-image": (("qwen3", "text_encoders/qwen_3_4b.safetensors"), ("vae", "VAE/ae.safetensors")),
    "qwen-image": (("qwen25vl", "text_encoders/qwen_2.5_vl_7b.safetensors"), ("vae", "VAE/qwen_image_vae.safetensors")),
    "flux2": (("qwen3", "text_encoders/qwen_3_4b.safetensors"), ("vae", "VAE/flux2-vae.safetensors")),
    "sd3": (
        ("clip_l", "sd3/clip_l.safetensors"), ("clip_g", "sd3/clip_g.safetensors"), ("t5xxl", "sd3/t5xxl_fp16.safetensors"),
        ("vae", "sd3/sd3_vae.safetensors"),
    ),
}


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per family, the tiny transformer of seed 0 as a plain file and as Q8_0 and Q4_K GGUF files (as
    the maker writes them), with its parts in a ComfyUI models folder; Flux also of seed 1."""
    from safetensors.torch import load_file, save_file

    from gpu_worker.testing.tiny_flux import make_tiny_chroma, make_tiny_component, make_tiny_flux, make_tiny_flux_parts
    from gpu_worker.testing.tiny_flux2 import make_tiny_flux2, make_tiny_flux2_parts
    from gpu_worker.testing.tiny_qwen_image import make_tiny_qwen_image, make_tiny_qwen_image_parts
    from gpu_worker.testing.tiny_sd3 import make_tiny_sd3
    from gpu_worker.testing.tiny_z_image import make_tiny_z_image, make_tiny_z_image_parts

    root = tmp_path_factory.mktemp("gguf") / "models"
    makers = {
        "flux": lambda out, seed: make_tiny_flux(out, seed, shape="transformer"),
        "chroma": lambda out, seed: make_tiny_chroma(out, seed),
        "z-image": lambda out, seed: make_tiny_z_image(out, seed),
        "qwen-image": lambda out, seed: make_tiny_qwen_image(out, seed),
        "flux2": lambda out, seed: make_tiny_flux2(out, seed),
        "sd3": lambda out, seed: make_tiny_sd3(out, "sd35", seed),  # SAI's file: the MMDiT and its VAE
    }
    for family, make in makers.items():
        make(root / f"{family}.safetensors", 0)
        for form in ("gguf-q8_0", "gguf-q4_k"):
            plain = make(root / f".{family}-{form}.safetensors", 0)
            quantise_file(plain, form, family, root / f"{family}-{form}.gguf")
    plain = make_tiny_flux(root / ".flux-1.safetensors", 1, shape="transformer")
    quantise_file(plain, "gguf-q8_0", "flux", root / "flux-seed1-gguf-q8_0.gguf")
    make_tiny_flux_parts(root)
    make_tiny_z_image_parts(root)
    make_tiny_qwen_image_parts(root)
    make_tiny_flux2_parts(root)  # after Z-Image's: the same tiny Qwen3 file, and FLUX.2's VAE
    # SD3.5's parts apart (its VAE taken from SAI's file, as a user keeps the SD3 VAE)
    for kind, name in (("sd3-clip-l", "clip_l"), ("sd3-clip-g", "clip_g"), ("sd3-t5xxl", "t5xxl_fp16")):
        make_tiny_component(kind, root / "sd3" / f"{name}.safetensors")
    vae = {k.removeprefix("first_stage_model."): v for k, v in load_file(str(root / "sd3.safetensors")).items() if k.startswith("first_stage_model.")}
    save_file(vae, str(root / "sd3" / "sd3_vae.safetensors"))
    return root


def request(root: Path, name: str, family: str) -> LoadRequest:
    path = root / name
    ins = inspect_file(path)
    parts = tuple(ComponentUse(role, Path(file).name, str(root / file), role[0] * 64) for role, file in FAMILY_PARTS[family])
    return LoadRequest(str(path), path.stem, family, ins.architecture.label, ins.format, ins.pipeline_config, "flow", path.stem, components=parts)


def test_the_header_reader_agrees_with_the_gguf_packages_own(gguf_dir: Path) -> None:
    assert GGML_TYPES == {t.value: t.name for t in gguf.GGMLQuantizationType if t.value in GGML_TYPES}
    assert set(GGML_TYPES.values()) >= {"F32", "F16", "BF16", "Q8_0", "Q4_K", "Q6_K"}
    assert GGML_BLOCKS == {name: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] for name in GGML_BLOCKS}
    for file in gguf_dir.glob("*.gguf"):
        ours = read_gguf_header(file)
        theirs = gguf.GGUFReader(file)
        assert list(ours.tensors) == [t.name for t in theirs.tensors], file.name
        for t in theirs.tensors:
            mine = ours.tensors[t.name]
            assert (mine.offset, mine.nbytes, mine.dtype) == (t.data_offset, t.n_bytes, t.tensor_type.name), t.name
            assert mine.shape == tuple(int(d) for d in reversed(t.shape)), t.name
        assert ours.metadata["general.architecture"] == {"chroma": "flux", "flux2": "flux", "sd3": "sd3", "z-image": "lumina2", "qwen-image": "qwen_image"}.get(
            file.stem.split("-gguf")[0].removesuffix("-seed1"), "flux"
        )


def test_q4_k_blocks_are_read_back_by_two_independent_dequantisers() -> None:
    """The maker's own Q4_K packing (the gguf package only reads K-quants): the gguf package's numpy
    reader and diffusers' torch reader both read it back, and what they read is the input."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    values = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32) * 0.05
    values[0, :32] += 0.3  # one sub-block far from the rest: its own scale and min must carry it
    blocks = q4_k(values)
    assert blocks.shape == (6, 2 * 144) and blocks.dtype == np.uint8
    numpy_read = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_K)
    torch_read = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(blocks), quant_type=gguf.GGMLQuantizationType.Q4_K))
    assert np.allclose(torch_read.float().numpy(), numpy_read, atol=1e-3)
    error = np.sqrt(((numpy_read - values) ** 2).mean()) / values.std()
    assert error < 0.1, error  # 4 bits a value: within a tenth of the spread
    swapped = blocks.copy()
    swapped[:, 4:16] = blocks[:, 4:16][:, ::-1]  # the packed scales in the wrong order
    assert np.sqrt(((gguf.quants.dequantize(swapped, gguf.GGMLQuantizationType.Q4_K) - values) ** 2).mean()) / values.std() > 0.5


def test_inspect_names_a_gguf_transformer_what_it_needs_and_what_it_takes(gguf_dir: Path, tmp_path: Path) -> None:
    ins = inspect_file(gguf_dir / "flux-gguf-q8_0.gguf")
    assert (ins.format, ins.architecture.label, ins.architecture.runnable) == ("gguf", "FLUX.1 dev (transformer only)", True)
    assert ins.quantisation.startswith("GGUF Q8_0 (some tensors F32)") and ins.dtype == "Q8_0"
    assert ins.architecture.needs and ins.pipeline_config == "tiny-flux"
    plain = inspect_file(gguf_dir / "flux.safetensors")
    assert ins.parameters == plain.parameters and ins.file_size < plain.file_size / 2
    assert inspect_file(gguf_dir / "flux-gguf-q4_k.gguf").quantisation.split(":")[0].endswith("Q4_K)")
    for family in ("chroma", "z-image", "qwen-image", "flux2"):
        other = inspect_file(gguf_dir / f"{family}-gguf-q4_k.gguf")
        assert other.architecture.family == family and other.architecture.runnable, (family, other.architecture.reason)
    # A GGUF UNet (city96 ships SD1.5 and SDXL ones) is named and refused: not a transformer model
    unet = tmp_path / "sd15-Q8_0.gguf"
    write_gguf(unet, {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((320, 4, 3, 3), np.float16), "model.diffusion_model.out.2.weight": np.zeros((4, 320, 3, 3), np.float16)}, "sd1")
    verdict = inspect_file(unet).architecture
    assert not verdict.runnable and "GGUF files are read for the transformer models" in verdict.reason
    # a type the worker cannot widen (IQ2_XS, a 2-bit "importance" quant) is named
    iq2 = tmp_path / "flux-IQ2_XS.gguf"
    state = {name: np.zeros(t.shape, np.float32) for name, t in read_gguf_header(gguf_dir / "flux-gguf-q8_0.gguf").tensors.items()}
    big = next(name for name, v in state.items() if v.ndim == 2 and v.shape[1] % 256 == 0)
    write_gguf(iq2, state, "flux", iq2_xs=big)
    verdict = inspect_file(iq2).architecture
    assert not verdict.runnable and "IQ2_XS weights, which cannot be widened here" in verdict.reason


def write_gguf(path: Path, state: dict[str, np.ndarray], arch: str, iq2_xs: str = "") -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    for name, values in state.items():
        if name == iq2_xs:  # bytes of the right size: the header is what is judged
            rows, width = values.shape
            writer.add_tensor(name, np.zeros((rows, width // 256 * 74), np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ2_XS)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def drawn(runner, events: list, load: LoadRequest, **values) -> np.ndarray:
    events.clear()
    settings_ = {"cfg": 1.0, "sampler": "Euler"} | values
    runner.run(RunBatch.of("b", load, (JobPart("j", "a red circle", "", (7,)),), 64, 64, 3, schedule="Automatic", **settings_))
    [done] = [e for e in events if isinstance(e, JobDone)]
    return np.asarray(Image.open(io.BytesIO(done.images[0].png)), dtype=float)


@pytest.fixture(scope="module")
def runner_and_events():
    runner, events, cache = in_process_runner()
    return runner, events, cache


@pytest.mark.parametrize("family", ["flux", "chroma", "z-image", "qwen-image", "flux2", "sd3"])
def test_each_family_draws_its_plain_files_picture_from_its_gguf_files(gguf_dir: Path, runner_and_events, family: str) -> None:
    """Quantised weights stay quantised (GGUF layers holding their blocks: fewer bytes than the plain
    file's model) and the picture is the plain file's within the quantisation's rounding; another
    seed's file draws a far one, so the comparison can tell."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    runner, events, cache = runner_and_events
    reference = drawn(runner, events, request(gguf_dir, f"{family}.safetensors", family))
    gaps = {}
    for form in ("gguf-q8_0", "gguf-q4_k"):
        load = request(gguf_dir, f"{family}-{form}.gguf", family)
        gaps[form] = np.abs(drawn(runner, events, load) - reference).mean()
        loaded, _ = cache.get(load)
        layers = [m for m in loaded.pipeline.transformer.modules() if isinstance(m, GGUFLinear)]
        assert layers and all(layer.weight.dtype == torch.uint8 for layer in layers)
        plain, _ = cache.get(request(gguf_dir, f"{family}.safetensors", family))
        held = sum(p.numel() * p.element_size() for p in loaded.pipeline.transformer.parameters())
        assert held < 0.5 * sum(p.numel() * p.element_size() for p in plain.pipeline.transformer.parameters())
    assert gaps["gguf-q8_0"] < 1.5 and gaps["gguf-q4_k"] < 3, gaps  # mean levels of 255
    if family == "flux":
        far = np.abs(drawn(runner, events, request(gguf_dir, "flux-seed1-gguf-q8_0.gguf", "flux")) - reference).mean()
        assert far > 5 * max(gaps.values()), (far, gaps)


def test_a_gguf_transformer_is_never_stored_in_fp8_over_its_blocks(gguf_dir: Path, runner_and_events) -> None:
    """On a card too small for the transformer, a plain one may be stored in fp8; a GGUF one is
    quantised already and goes to group offload (its blocks moved in one at a time) instead."""
    from diffusers import FluxPipeline

    from gpu_worker.placement import FP8, GROUP, choose, part_bytes

    _, _, cache = runner_and_events
    for name, wanted in (("flux.safetensors", FP8), ("flux-gguf-q8_0.gguf", GROUP)):
        loaded = cache.get(request(gguf_dir, name, "flux"))[0].pipeline
        # the transformer alone, as when it is the largest part by far (FLUX.1's 12B beside its encoders)
        pipe = FluxPipeline(loaded.scheduler, None, None, None, None, None, loaded.transformer)
        [size] = part_bytes(pipe).values()
        assert choose(pipe, size - 1, fp8=True) == wanted, name


def test_a_lora_acts_on_a_gguf_model_and_leaves_no_trace(gguf_dir: Path, runner_and_events) -> None:
    """PEFT's layers wrap the GGUF layers: the LoRA moves the picture as much as on the plain file."""
    from gpu_worker.testing.tiny_flux import make_tiny_flux_lora

    runner, events, _ = runner_and_events
    make_tiny_flux_lora(gguf_dir / "glow.safetensors", seed=3)
    lora = (LoraUse("glow", str(gguf_dir / "glow.safetensors"), "1" * 64, "1" * 12, 1.0, 1.0),)
    moved = {}
    for name in ("flux.safetensors", "flux-gguf-q8_0.gguf"):
        load = request(gguf_dir, name, "flux")
        before = drawn(runner, events, load)
        moved[name] = np.abs(drawn(runner, events, load, loras=lora) - before).mean()
        assert np.array_equal(drawn(runner, events, load), before)  # off again for a job without it
    assert moved["flux-gguf-q8_0.gguf"] > 1 and abs(moved["flux-gguf-q8_0.gguf"] - moved["flux.safetensors"]) < 0.5, moved


@pytest.mark.parametrize(("family", "role"), [("flux", "t5xxl"), ("z-image", "qwen3")])
async def test_a_gguf_text_encoder_is_registered_read_by_its_original_names_and_draws(
    gguf_dir: Path, runner_and_events, tmp_path: Path, family: str, role: str
) -> None:
    """city96's T5 and a Qwen3 GGUF under llama.cpp's names (`enc.blk.0.attn_q`, `blk.0.attn_q`): the
    text encoder store registers them, the worker reads them back as the original model's tensors,
    keeps their matrices quantised, and draws the plain encoder's picture within its rounding."""
    import shutil

    from diffusers.quantizers.gguf.utils import GGUFLinear

    from bot.components.text_encoders import TextEncoderRegistry
    from bot.db import open_database

    runner, events, cache = runner_and_events
    plain_file = dict(FAMILY_PARTS[family])[role]
    models = tmp_path / "models"
    (models / "text_encoders").mkdir(parents=True)
    copy = shutil.copy(gguf_dir / plain_file, models / "text_encoders" / ".plain.safetensors")
    encoder = quantise_file(Path(copy), "gguf-q8_0", role, models / "text_encoders" / f"{role}-Q8_0.gguf")
    assert gguf.GGUFReader(encoder).tensors[0].name.startswith(("enc.blk.0.", "blk.0.", "token_embd"))
    db = await open_database(tmp_path / "easel.db")
    try:
        scan = await TextEncoderRegistry(db, models).scan()
        [entry] = scan.added
        assert (entry.base, entry.format) == (role.replace("_", "-"), "gguf"), entry
    finally:
        await db.close()
    plain = request(gguf_dir, f"{family}.safetensors", family)
    swapped = tuple(ComponentUse(role, encoder.name, str(encoder), "e" * 64) if use.role == role else use for use in plain.components)
    load = replace(plain, components=swapped)
    gap = np.abs(drawn(runner, events, load) - drawn(runner, events, plain)).mean()
    assert gap < 1.5, gap
    loaded, _ = cache.get(load)
    text_encoder = loaded.pipeline.text_encoder_2 if family == "flux" else loaded.pipeline.text_encoder
    assert any(isinstance(m, GGUFLinear) for m in text_encoder.modules())


def test_the_command_line_makes_registers_and_draws_with_a_gguf_file(env: Path, cli, capsys: pytest.CaptureFixture[str]) -> None:
    """`make-tiny-checkpoint --format gguf-q4_k` (the worker's tool, in this process: the CLI's path to
    it is Kontext's test), `checkpoints scan` registers the file from ComfyUI's diffusion_models
    folder, and `generate` draws with it in the worker process."""
    from gpu_worker.__main__ import main

    models = env / "models"
    made = ["make-tiny-checkpoint", "--arch", "flux-transformer", "--format", "gguf-q4_k", "--parts", str(models)]
    assert main([*made, str(models / "diffusion_models" / "flux1-dev-Q4_K.gguf")]) == 0
    assert not [p for p in (models / "diffusion_models").iterdir() if p.name.startswith(".")]  # its plain file is gone
    assert main(["make-tiny-checkpoint", "--arch", "flux-transformer", "--format", "gguf-q8_0", str(models / "x.safetensors")]) == 1
    assert "ends in .gguf" in capsys.readouterr().err and not (models / "x.safetensors").exists()
    assert main(["make-tiny-checkpoint", "--arch", "flux", "--format", "gguf-q8_0", str(models / "x.gguf")]) == 1
    assert "holds the transformer alone" in capsys.readouterr().err
    assert not [p for p in models.iterdir() if p.name.lstrip(".").startswith("x")]
    scanned = cli("checkpoints", "scan")
    assert scanned.code == 0 and "flux1-dev-Q4_K" in scanned.out, scanned.out
    inspected = cli("inspect", str(models / "diffusion_models" / "flux1-dev-Q4_K.gguf"))
    assert "Format:        gguf" in inspected.out and "quantised as in the file" in inspected.out, inspected.out
    result = cli("generate", "--checkpoint", "flux1-dev-Q4_K", "--prompt", "a lighthouse", "--steps", "2", "--out", str(env / "out"))
    assert result.code == 0, result.err
    [picture] = (env / "out").glob("*.png")
    _, _, params = parse_generation_parameters(Image.open(picture).info["parameters"])
    assert params["Model"] == "flux1-dev-Q4_K" and np.asarray(Image.open(picture)).std() > 1


# ---- hostile headers -------------------------------------------------------------------------


def header(
    tensors: list[tuple[str, tuple[int, ...], int, int]] | None = None,
    keys: bytes = b"",
    n_keys: int = 0,
    version: int = 3,
    n_tensors: int | None = None,
    data: int | None = None,
    alignment: int = 32,
) -> bytes:
    """A GGUF file's bytes: `tensors` as (name, dims innermost first, ggml type, offset), the data
    section zero-filled to `data` bytes (default: what the tensors need)."""
    tensors = [("w", (32, 2), 8, 0)] if tensors is None else tensors
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, n_keys) + keys
    for name, dims, kind, offset in tensors:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind, offset)
    out += b"\0" * (-len(out) % alignment)
    if data is None:
        data = max((offset + 68 for _, _, _, offset in tensors), default=0)  # a (2, 32) Q8_0 tensor: 2 blocks of 34
    return out + b"\0" * data


def kv(key: str, kind: int, value: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value


# Each attack, and the words of the one-line refusal it must get (so each is refused for its fault).
HOSTILE: dict[str, tuple[bytes, str]] = {
    "truncated header": (header()[:30], "file is truncated"),
    "version 1": (header(version=1), "GGUF version 1 is not read"),
    "a billion tensors": (header(n_tensors=10**9), "1,000,000,000 tensors, over the limit"),
    "a billion keys": (header(n_keys=10**9), "1,000,000,000 keys, over the limit"),
    "a key of 2**62 bytes": (header(keys=struct.pack("<Q", 2**62), n_keys=1), "over the limit of 1,024"),
    "a string value past the end": (header(keys=kv("general.name", 8, struct.pack("<Q", 10**7) + b"abc"), n_keys=1), "runs past its end"),
    "an unknown value type": (header(keys=kv("x", 99, b""), n_keys=1), "unknown type 99"),
    "an array of arrays": (header(keys=kv("x", 9, struct.pack("<IQ", 9, 1)), n_keys=1), "an array of type 9"),
    "an array of 2**60 integers": (header(keys=kv("x", 9, struct.pack("<IQ", 4, 2**60)), n_keys=1), "more than the header can hold"),
    "an array of 10**8 strings": (header(keys=kv("x", 9, struct.pack("<IQ", 8, 10**8)), n_keys=1), "100,000,000 strings, over the limit"),
    "a key named twice": (header(keys=kv("a", 4, struct.pack("<I", 1)) * 2, n_keys=2), "names the key 'a' twice"),
    "a key that is not UTF-8": (header(keys=struct.pack("<Q", 1) + b"\xff" + struct.pack("<I", 4) + b"\0" * 4, n_keys=1), "not valid UTF-8"),
    "an alignment of 3": (header(keys=kv("general.alignment", 4, struct.pack("<I", 3)), n_keys=1), "power of two"),
    "an alignment given as text": (header(keys=kv("general.alignment", 8, struct.pack("<Q", 2) + b"32"), n_keys=1), "power of two"),
    "zero dimensions": (header(tensors=[("w", (), 8, 0)]), "has 0 dimensions"),
    "five dimensions": (header(tensors=[("w", (32, 1, 1, 1, 1), 8, 0)]), "has 5 dimensions"),
    "a dimension of zero": (header(tensors=[("w", (32, 0), 8, 0)]), "a dimension of 0,"),
    "a dimension of 2**50": (header(tensors=[("w", (32, 2**50), 8, 0)]), "a dimension of 1,125,899,906,842,624"),
    "an unknown ggml type": (header(tensors=[("w", (32, 2), 77, 0)]), "unknown ggml type 77"),
    "rows that do not fill the blocks": (header(tensors=[("w", (33, 2), 8, 0)]), "do not fill Q8_0's blocks of 32"),
    "a misaligned offset": (header(tensors=[("w", (32, 2), 8, 4)]), "not a multiple of the alignment"),
    "overlapping tensors": (header(tensors=[("a", (32, 2), 8, 0), ("b", (32, 2), 8, 32)], data=200), "overlaps"),
    "a gap between tensors": (header(tensors=[("a", (32, 2), 8, 0), ("b", (32, 2), 8, 320)], data=400), "unexplained bytes"),
    "a tensor past the end": (header(data=40), "ends at byte"),
    "bytes after the last tensor": (header(data=68 + 4096), "unexpected bytes after the last tensor"),
    "a tensor named twice": (header(tensors=[("w", (32, 2), 8, 0), ("w", (32, 2), 8, 96)], data=164), "names the tensor 'w' twice"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_gguf_header_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "hostile.gguf"
    attack, reason = HOSTILE[case]
    path.write_bytes(attack)
    with pytest.raises(CheckpointFileError) as caught:
        inspect_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("hostile.gguf: ") and reason in message and len(message) < 300, message


def test_a_well_formed_header_of_the_same_helper_is_read(tmp_path: Path) -> None:
    """The helper's file without a fault reads, so each refusal above is its fault's."""
    path = tmp_path / "fine.gguf"
    path.write_bytes(header(tensors=[("a", (32, 2), 8, 0), ("b", (32, 2), 8, 96)], keys=kv("general.alignment", 4, struct.pack("<I", 32)), n_keys=1, data=164))
    read = read_gguf_header(path)
    assert [(t.name, t.shape, t.dtype, t.nbytes) for t in read.tensors.values()] == [("a", (2, 32), "Q8_0", 68), ("b", (2, 32), "Q8_0", 68)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
def test_a_mangled_gguf_file_reads_or_is_refused_never_crashes(gguf_dir: Path, tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    raw = bytearray((gguf_dir / "flux-gguf-q8_0.gguf").read_bytes())
    for at, value in flips:
        raw[at % len(raw)] = value
    path = tmp_path / "mangled.gguf"
    path.write_bytes(bytes(raw))
    try:
        inspect_file(path)
    except CheckpointFileError as e:
        assert "\n" not in str(e)


async def test_a_hostile_gguf_among_good_files_is_refused_by_name_when_scanned(tmp_path: Path, gguf_dir: Path) -> None:
    """The same attack through the registry's scan and the text encoder folder: refused by name, the
    good files registered, nothing else changed."""
    import shutil

    from bot.checkpoints.registry import CheckpointRegistry
    from bot.db import open_database

    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    shutil.copy(gguf_dir / "flux-gguf-q8_0.gguf", models / "diffusion_models" / "good.gguf")
    (models / "diffusion_models" / "bad.gguf").write_bytes(HOSTILE["overlapping tensors"][0])
    db = await open_database(tmp_path / "easel.db")
    try:
        registry = CheckpointRegistry(db, models)
        report = await registry.scan()
        assert [entry.name for entry in report.added] == ["good"]
        [(where, why)] = report.errors
        assert where.endswith("bad.gguf") and "overlaps" in why, why
    finally:
        await db.close()
