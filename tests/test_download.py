"""Registering a checkpoint by URL or Civitai version: streamed, capped, checked, atomic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from bot.checkpoints.download import Downloader
from bot.checkpoints.registry import CheckpointRegistry
from common.errors import EaselError


def server(files: dict[str, bytes], calls: list[str], *, civitai: dict | None = None, length: bool = True):
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        path = request.url.path
        if path.startswith("/api/v1/model-versions/"):
            return httpx.Response(200, json=civitai) if civitai else httpx.Response(404)
        if path == "/gated.safetensors":
            return httpx.Response(401)
        if path not in files:
            return httpx.Response(404)
        body = files[path]
        if length:
            return httpx.Response(200, content=body)
        return httpx.Response(200, stream=httpx.ByteStream(body))  # no content-length

    return httpx.MockTransport(handler)


def leftovers(registry: CheckpointRegistry) -> list[str]:
    return sorted(p.name for p in registry.models_root.iterdir())


async def test_download_by_url_registers_the_file(registry: CheckpointRegistry, tiny_dir: Path) -> None:
    body = (tiny_dir / "tiny-sd1.safetensors").read_bytes()
    calls: list[str] = []
    seen: list[int] = []
    downloader = Downloader(registry, max_bytes=10**9, transport=server({"/m/fox.safetensors": body}, calls))
    entry = await downloader.download(
        "https://example.org/m/fox.safetensors", progress=lambda done, total: seen.append(done)
    )
    assert entry.sha256 == hashlib.sha256(body).hexdigest() and entry.family == "sd1"
    assert leftovers(registry) == ["fox.safetensors"] and seen[-1] == len(body)


async def test_a_downloaded_lora_or_embedding_goes_to_its_own_folder(
    registry: CheckpointRegistry, tiny_loras: Path
) -> None:
    from bot.networks.registry import EmbeddingRegistry, LoraRegistry

    loras, embeddings = (
        LoraRegistry(registry.db, registry.models_root),
        EmbeddingRegistry(registry.db, registry.models_root),
    )
    files = {
        f"/m/{n}.safetensors": (tiny_loras / f"{n}.safetensors").read_bytes() for n in ("lora-sd1", "embedding-sd1")
    }
    downloader = Downloader(registry, max_bytes=10**9, transport=server(files, []), networks=[loras, embeddings])
    lora = await downloader.download("https://example.org/m/lora-sd1.safetensors", name="ink")
    word = await downloader.download("https://example.org/m/embedding-sd1.safetensors")
    assert (lora.name, lora.label, lora.relative_path) == ("ink", "LoRA for SD1.x", "lora-sd1.safetensors")
    assert word.kind == "embedding" and (registry.models_root / "embeddings" / "embedding-sd1.safetensors").is_file()
    assert leftovers(registry) == ["Lora", "embeddings"] and await registry.list() == []


async def test_a_downloaded_upscaler_goes_to_models_esrgan(registry: CheckpointRegistry, tmp_path: Path) -> None:
    from bot.upscalers.registry import UpscalerRegistry
    from gpu_worker.testing.tiny_upscalers import make_tiny_upscaler

    upscalers = UpscalerRegistry(registry.db, registry.models_root)
    body = make_tiny_upscaler(tmp_path / "RealESRGAN_x4plus.pth", "realesrgan", 4).read_bytes()
    downloader = Downloader(
        registry, max_bytes=10**9, transport=server({"/m/RealESRGAN_x4plus.pth": body}, []), networks=[upscalers]
    )
    entry = await downloader.download("https://example.org/m/RealESRGAN_x4plus.pth")
    assert (entry.name, entry.alias, entry.rank, entry.format) == ("RealESRGAN_x4plus", "R-ESRGAN 4x+", 4, "pickle")
    assert (registry.models_root / "ESRGAN" / "RealESRGAN_x4plus.pth").is_file() and await registry.list() == []


async def test_civitai_version_download_checks_the_hash(registry: CheckpointRegistry, tiny_dir: Path) -> None:
    body = (tiny_dir / "tiny-sdxl.safetensors").read_bytes()
    version = {
        "id": 7,
        "model": {"type": "Checkpoint", "name": "Tiny"},
        "files": [
            {
                "name": "tiny.ckpt",
                "downloadUrl": "https://civitai.com/api/download/models/7?type=Pruned",
                "primary": False,
            },
            {
                "name": "tiny xl.safetensors",
                "primary": True,
                "sizeKB": len(body) / 1024,
                "hashes": {"SHA256": hashlib.sha256(body).hexdigest().upper()},
                "downloadUrl": "https://civitai.com/api/download/models/7",
            },
        ],
    }
    calls: list[str] = []
    transport = server({"/api/download/models/7": body}, calls, civitai=version)
    entry = await Downloader(registry, max_bytes=10**9, transport=transport).download("civitai:7", name="tiny xl")
    assert entry.name == "tiny-xl" and entry.relative_path == "tiny xl.safetensors"
    assert calls == ["https://civitai.com/api/v1/model-versions/7", "https://civitai.com/api/download/models/7"]
    # the same version with a different expected hash: refused, nothing kept
    await registry.remove("tiny-xl")
    (registry.models_root / "tiny xl.safetensors").unlink()
    version["files"][1]["hashes"]["SHA256"] = "0" * 64
    transport = server({"/api/download/models/7": body}, calls, civitai=version)
    with pytest.raises(EaselError, match="sha256 mismatch"):
        await Downloader(registry, max_bytes=10**9, transport=transport).download("civitai:7")
    assert leftovers(registry) == [] and await registry.list() == []


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("ftp://example.org/a.safetensors", {}, "not an http\\(s\\) URL"),
        ("file:///etc/passwd", {}, "not an http\\(s\\) URL"),
        ("https://example.org/setup.exe", {}, "not a checkpoint file name"),
        ("https://example.org/m/noise.safetensors", {}, "not a usable checkpoint"),
        ("https://example.org/m/big.safetensors", {}, "the limit is"),
        ("https://example.org/m/missing.safetensors", {}, "HTTP 404"),
        ("https://example.org/gated.safetensors", {}, "EASEL_CIVITAI_API_KEY"),
        ("https://example.org/m/fox.safetensors", {"sha256": "abc"}, "64 hex digits"),
        ("civitai:99", {}, "no model version 99"),
    ],
)
async def test_bad_downloads_are_refused_and_leave_nothing(
    registry: CheckpointRegistry, tiny_dir: Path, source: str, kwargs: dict, message: str
) -> None:
    files = {
        "/m/noise.safetensors": b"\x00" * 4096,
        "/m/big.safetensors": b"\x00" * 5000,
        "/m/fox.safetensors": (tiny_dir / "tiny-sd1.safetensors").read_bytes(),
    }
    downloader = Downloader(registry, max_bytes=4500, transport=server(files, []))
    if "fox" in source:
        downloader.max_bytes = 10**9
    with pytest.raises(EaselError, match=message):
        await downloader.download(source, **kwargs)
    assert leftovers(registry) == [] and await registry.list() == []


async def test_size_cap_holds_without_a_content_length(registry: CheckpointRegistry) -> None:
    transport = server({"/m/big.safetensors": b"\x00" * (3 << 20)}, [], length=False)
    with pytest.raises(EaselError, match=r"passed the 1\.0 MB limit"):
        await Downloader(registry, max_bytes=1 << 20, transport=transport).download(
            "https://example.org/m/big.safetensors"
        )
    assert leftovers(registry) == []


async def test_a_civitai_lora_is_not_a_checkpoint(registry: CheckpointRegistry) -> None:
    version = {"id": 3, "model": {"type": "LORA"}, "files": [{"name": "x.safetensors", "downloadUrl": "https://x/y"}]}
    with pytest.raises(EaselError, match="is a LORA, not a checkpoint"):
        await Downloader(registry, max_bytes=10**9, transport=server({}, [], civitai=version)).download("civitai:3")


async def test_existing_file_is_not_overwritten(registry: CheckpointRegistry, tiny_dir: Path) -> None:
    (registry.models_root / "fox.safetensors").write_bytes(b"mine")
    downloader = Downloader(registry, max_bytes=10**9, transport=server({}, []))
    with pytest.raises(EaselError, match="already exists"):
        await downloader.download("https://example.org/m/fox.safetensors")
    assert (registry.models_root / "fox.safetensors").read_bytes() == b"mine"


def test_cli_download_refuses_a_bad_source(cli) -> None:
    r = cli("checkpoints", "download", "ftp://example.org/a.safetensors")
    assert (
        r.code == 1
        and r.err.strip() == "error: 'ftp://example.org/a.safetensors' is not an http(s) URL or civitai:VERSION_ID"
    )
