"""Register a checkpoint from a URL or a Civitai model-version id: download, check, then register.

The file is streamed to a hidden temporary name in the models directory (so a scan never sees it),
hashed as it arrives, refused past the size cap, checked against the expected sha256 (Civitai
gives one), inspected like any other checkpoint, and only then renamed into place and registered.
Any failure, a cancel included, deletes the temporary file: nothing half-written is left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from bot import outbound
from bot.catalog.civitai import CIVITAI_URL, CivitaiError, read_answer
from bot.checkpoints.inspection import CHECKPOINT_SUFFIXES, inspect_file
from bot.checkpoints.registry import CheckpointEntry, CheckpointRegistry
from bot.config import Settings
from bot.networks.registry import NetworkEntry, NetworkRegistry
from common.errors import CheckpointFileError, EaselError
from common.safetensors_writer import temp_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
CIVITAI_SOURCE = re.compile(r"^(?:civitai:|https://civitai\.com/models/\d+[^?]*\?modelVersionId=)(\d+)$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")

DownloadProgress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class DownloadError(EaselError):
    pass


@dataclass
class DownloadPlan:
    url: str
    filename: str
    sha256: str | None = None  # expected, when the source says
    size: int | None = None
    source: str = "url"


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 100e6 else f"{n / 1e6:.1f} MB"


def safe_filename(name: str) -> str:
    """A plain file name for the models directory: no folders, no hidden files, a checkpoint suffix."""
    base = _SAFE_NAME.sub("_", Path(unquote(name)).name).strip(" .")
    if not base or Path(base).suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise DownloadError(f"{name!r} is not a checkpoint file name (expected .safetensors or .ckpt)")
    return base


class Downloader:
    def __init__(
        self,
        registry: CheckpointRegistry,
        *,
        max_bytes: int,
        civitai_api_key: str | None = None,
        civitai_url: str = CIVITAI_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: outbound.Policy | None = None,
        networks: Sequence[NetworkRegistry] = (),
    ) -> None:
        self.registry = registry
        self.networks = networks  # a LoRA or an embedding goes to its own folder and registry
        self.max_bytes = max_bytes
        self.civitai_api_key = civitai_api_key
        self.civitai_url = civitai_url
        self.transport = transport
        self.policy = policy or outbound.Policy()

    @classmethod
    def from_settings(
        cls, registry: CheckpointRegistry, settings: Settings, networks: Sequence[NetworkRegistry] = ()
    ) -> Downloader:
        return cls(
            registry,
            max_bytes=int(settings.download_max_gb * 1e9),
            civitai_api_key=settings.civitai_key,
            policy=settings.outbound_policy(),
            networks=networks,
        )

    def _client(self) -> httpx.AsyncClient:
        # Every connection, redirect hops included, goes through the outbound address policy.
        return outbound.client(
            self.policy,
            transport=self.transport,
            follow_redirects=True,
            max_redirects=5,
            timeout=httpx.Timeout(30.0, connect=10.0),
            headers={"User-Agent": "Easel (Discord bot)"},
        )

    async def plan(self, source: str) -> DownloadPlan:
        """What `source` (an http(s) URL, or civitai:VERSION_ID) downloads, before any byte of it."""
        source = source.strip()
        match = CIVITAI_SOURCE.match(source)
        if match:
            return await self._plan_civitai(int(match[1]))
        return DownloadPlan(url=_http_url(source), filename=safe_filename(urlparse(source).path or ""))

    async def _plan_civitai(self, version_id: int) -> DownloadPlan:
        async with self._client() as client:
            try:
                response = await client.get(f"{self.civitai_url}/api/v1/model-versions/{version_id}")
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                raise DownloadError(f"Civitai could not be reached ({type(e).__name__})") from None
        if response.status_code == 404:
            raise DownloadError(f"Civitai has no model version {version_id}")
        if response.status_code != 200:
            raise DownloadError(f"Civitai answered HTTP {response.status_code} for version {version_id}")
        try:
            data = read_answer(response)
        except CivitaiError as e:
            raise DownloadError(str(e)) from None
        if not isinstance(data, dict):
            raise DownloadError(f"Civitai's answer for version {version_id} is not a model version")
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        model_type = str(model.get("type") or "")
        if model_type and model_type != "Checkpoint":
            raise DownloadError(f"Civitai version {version_id} is a {model_type[:40]}, not a checkpoint")
        files = data.get("files") if isinstance(data.get("files"), list) else []
        files = [f for f in files if isinstance(f, dict) and isinstance(f.get("downloadUrl"), str)]
        files.sort(key=lambda f: (not f.get("primary"), _format(f) != "SafeTensor"))
        if not files:
            raise DownloadError(f"Civitai version {version_id} has no file to download")
        chosen = files[0]
        hashes = chosen.get("hashes") if isinstance(chosen.get("hashes"), dict) else {}
        sha = str(hashes.get("SHA256") or "").lower() or None
        size_kb = chosen.get("sizeKB")
        size = (
            int(size_kb * 1024)
            if isinstance(size_kb, int | float)
            and not isinstance(size_kb, bool)
            and math.isfinite(size_kb)
            and 0 < size_kb < 1e15
            else None
        )
        return DownloadPlan(
            url=_http_url(chosen["downloadUrl"]),
            filename=safe_filename(str(chosen.get("name") or "")),
            sha256=sha,
            size=size,
            source=f"civitai:{version_id}",
        )

    async def download(
        self,
        source: str,
        *,
        name: str | None = None,
        sha256: str | None = None,
        nsfw: bool | None = None,
        progress: DownloadProgress | None = None,
    ) -> CheckpointEntry | NetworkEntry:
        plan = await self.plan(source)
        expected = (sha256 or plan.sha256 or "").lower() or None
        if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise DownloadError("--sha256 must be 64 hex digits")
        if plan.size is not None and plan.size > self.max_bytes:
            raise DownloadError(f"{plan.filename} is {_size(plan.size)}; the limit is {_size(self.max_bytes)}")
        root = self.registry.models_root
        target = root / plan.filename
        if await asyncio.to_thread(target.exists):
            raise DownloadError(f"{plan.filename} already exists in the models directory; register it with add")
        temp = temp_path(target)  # unique: two downloads of one name never share a file
        try:
            digest = await self._fetch(plan, temp, progress)
            if expected is not None and digest != expected:
                raise DownloadError(f"sha256 mismatch: expected {expected[:10]}…, got {digest[:10]}…; nothing kept")
            try:
                inspection = await asyncio.to_thread(inspect_file, temp)
            except CheckpointFileError as e:
                raise DownloadError(f"the download is not a usable checkpoint: {str(e).split(': ', 1)[-1]}") from None
            kind = next((n for n in self.networks if n.family == inspection.architecture.family), None)
            if kind is not None:  # a LoRA or an embedding: into its own folder, as A1111 keeps them
                folder = kind.default_folder()
                await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
                target = folder / plan.filename
                if await asyncio.to_thread(target.exists):
                    raise DownloadError(f"{plan.filename} already exists in {folder.name}; register it with add")
            await asyncio.to_thread(_place, temp, target)
        except BaseException:
            await asyncio.to_thread(temp.unlink, missing_ok=True)
            raise
        log.info("downloaded %s from %s (%s)", plan.filename, plan.source, digest[:10])
        try:
            if kind is not None:
                return await kind.add(target, name=name, nsfw=nsfw)
            return await self.registry.add(target, name=name, nsfw=nsfw)
        except EaselError:
            await asyncio.to_thread(target.unlink, missing_ok=True)  # e.g. the same content is registered already
            raise

    async def _fetch(self, plan: DownloadPlan, temp: Path, progress: DownloadProgress | None) -> str:
        headers = {}
        if plan.source.startswith("civitai:") and self.civitai_api_key:
            headers["Authorization"] = f"Bearer {self.civitai_api_key}"
        digest = hashlib.sha256()
        done = 0
        async with self._client() as client:
            try:
                async with client.stream("GET", plan.url, headers=headers) as response:
                    if response.status_code in (401, 403):
                        raise DownloadError(
                            f"the server refused the download (HTTP {response.status_code}); "
                            "a Civitai file may need EASEL_CIVITAI_API_KEY"
                        )
                    if response.status_code != 200:
                        raise DownloadError(f"the server answered HTTP {response.status_code}")
                    total = int(response.headers.get("content-length") or 0) or plan.size
                    if total and total > self.max_bytes:
                        raise DownloadError(f"the file is {_size(total)}; the limit is {_size(self.max_bytes)}")
                    with open(temp, "wb") as out:  # noqa: ASYNC230 (each write goes to a thread below)
                        async for chunk in response.aiter_bytes(CHUNK):
                            done += len(chunk)
                            if done > self.max_bytes:
                                raise DownloadError(f"the download passed the {_size(self.max_bytes)} limit")
                            digest.update(chunk)
                            await asyncio.to_thread(out.write, chunk)
                            if progress:
                                progress(done, total)
                        await asyncio.to_thread(os.fsync, out.fileno())
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                raise DownloadError(f"the download failed ({type(e).__name__}: {e})") from None
        return digest.hexdigest()


def _place(temp: Path, target: Path) -> None:
    """Move `temp` to `target` unless something took that name meanwhile (a second download)."""
    try:
        os.link(temp, target)  # fails if `target` exists, where a rename would replace it
    except FileExistsError:
        raise DownloadError(f"{target.name} appeared in the models directory meanwhile; nothing replaced") from None
    except OSError:  # a file system without hard links
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _format(file: dict) -> str:
    metadata = file.get("metadata")
    return str(metadata.get("format") or "") if isinstance(metadata, dict) else ""


def _http_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; where it may connect is checked when it connects."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError):
        raise DownloadError(f"{url[:200]!r} is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DownloadError(f"{url[:200]!r} is not an http(s) URL or civitai:VERSION_ID")
    return str(parsed)
