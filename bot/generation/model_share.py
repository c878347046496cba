"""The bot's side of remote workers fetching the files they lack, by sha256 (docs/remote-workers.md).

A worker started with `--fetch-missing` that is sent a batch naming files it does not hold gets, in
the batch, one ticket per file (common/protocol.FetchTicket): its hash, size and the addresses to
fetch it from — the operator's S3-compatible object store (a presigned GET of `PREFIX<sha256>`, when
EASEL_SHARE_S3_BUCKET is set) and the bot's own share (EASEL_SHARE_MODELS=true: an HTTP server on
EASEL_SHARE_HOST:EASEL_SHARE_PORT). The worker learns both from the batch, never from flags of its
own, and with worker keys the batch is signed, so a broker cannot send it elsewhere.

Each address of the bot's share carries its own token: an HMAC, under a secret of this bot process,
of the worker's id, the file's hash and an expiry. A token fetches one file, for one worker, for a
while (a leaked one is good for nothing else); the share serves only files this bot registered and
offered for a batch, by hash, never by a path a request names. aiohttp's FileResponse answers Range
requests (a cut download resumes). Whatever a source sends, the worker checks the bytes against the
hash before it uses them, so a source is trusted for nothing but speed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from common.errors import EaselError
from common.protocol import FetchTicket

log = logging.getLogger(__name__)

TICKET_SECONDS = 6 * 3600  # long enough for a large file over a slow link; a re-run gets new tickets
_SHA256 = re.compile(r"[0-9a-f]{64}")
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


@dataclass(frozen=True)
class NeededFile:
    """A file a job reads: what it is (for messages), its hash, and the bot's copy."""

    what: str
    sha256: str
    path: str


@dataclass(frozen=True)
class ShareOptions:
    serve: bool = False  # EASEL_SHARE_MODELS: the bot serves its files itself
    host: str = "0.0.0.0"
    port: int = 8765
    public_url: str = ""  # how workers reach the share (a TLS proxy in front); unset: http://this-host:port
    s3_bucket: str = ""
    s3_prefix: str = "easel/models/"
    s3_endpoint: str = ""  # an S3-compatible store's URL (MinIO, R2, …); unset: AWS
    s3_region: str = ""
    ticket_seconds: int = TICKET_SECONDS

    @property
    def enabled(self) -> bool:
        return self.serve or bool(self.s3_bucket)

    def for_command_line(self) -> ShareOptions:
        """`bot.py generate --broker` beside a running bot: its own share on a free port (the bot
        holds the configured one), or none when workers reach the share through a fixed address."""
        return replace(self, port=0) if not self.public_url else replace(self, serve=False)


class ObjectStore:
    """The operator's S3-compatible bucket (boto3): files kept under PREFIX + sha256; the bot presigns
    a GET per ticket, so workers need no credentials of their own. Credentials come from boto3's own
    chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role)."""

    def __init__(self, bucket: str, prefix: str, endpoint: str = "", region: str = "") -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"} if endpoint else {}),
        )

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}"

    def url(self, sha256: str, seconds: int) -> str:
        return str(
            self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(sha256)}, ExpiresIn=seconds
            )
        )

    def holds(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def push(self, path: Path, sha256: str) -> bool:
        """Uploads the file unless the bucket holds it already (multipart for big files); whether it
        was uploaded."""
        if self.holds(sha256):
            return False
        self._client.upload_file(str(path), self.bucket, self.key(sha256), ExtraArgs={"Metadata": {"sha256": sha256}})
        return True


class ModelShare:
    def __init__(
        self,
        options: ShareOptions,
        *,
        on_served: Callable[[int], None] = lambda n: None,
        on_refused: Callable[[], None] = lambda: None,
        store: ObjectStore | None = None,
    ) -> None:
        self.options = options
        self._secret = secrets.token_bytes(32)  # per bot process: tickets end with it
        self._offered: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._on_served, self._on_refused = on_served, on_refused
        self._store = store
        if store is None and options.s3_bucket:
            self._store = ObjectStore(options.s3_bucket, options.s3_prefix, options.s3_endpoint, options.s3_region)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        if not self.options.serve:
            return
        app = web.Application()
        app.router.add_get("/models/{sha256}", self._serve)  # HEAD too
        self._runner = web.AppRunner(app, access_log=None)  # tokens travel in the query: not logged
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise EaselError(
                f"the model share could not listen on {self.options.host}:{self.options.port} ({e.strerror or e})"
            ) from None
        port = self.options.port or _bound_port(self._runner)
        host = self.options.host if self.options.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
        self.url = (self.options.public_url or f"http://{host}:{port}").rstrip("/")
        log.info("model share on %s:%d, workers fetch from %s", self.options.host, port, self.url)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- tickets ---------------------------------------------------------------------------------

    def tickets(self, worker_id: str, files: list[NeededFile]) -> tuple[FetchTicket, ...]:
        """A ticket per file, its sources in order (the object store first: it spares the bot's
        uplink); each file offered by the bot's share from now on. EaselError naming a file no
        source can give."""
        expires = int(time.time()) + self.options.ticket_seconds
        made = []
        for file in files:
            path = Path(file.path)
            suffix = path.suffix.lower()
            if not file.sha256 or suffix not in MODEL_SUFFIXES:
                raise EaselError(f"{file.what} cannot be fetched by a worker (no hash, or not a single file)")
            size = file_size(file.path)
            urls = []
            if self._store is not None:
                try:
                    urls.append(self._store.url(file.sha256, self.options.ticket_seconds))
                except Exception as e:  # boto3's credentials missing or malformed: the bot's share still serves it
                    log.warning("the object store cannot presign %s: %s", file.what, e)
            if self.url and size >= 0:
                with self._lock:
                    self._offered[file.sha256] = path
                query = urlencode({"w": worker_id, "e": expires, "t": self._token(worker_id, file.sha256, expires)})
                urls.append(f"{self.url}/models/{file.sha256}?{query}")
            if not urls or size < 0:
                raise EaselError(f"{file.what} cannot be fetched by a worker: the bot cannot read its file")
            made.append(FetchTicket(file.sha256, size, suffix, file.what, tuple(urls)))
        return tuple(made)

    def _token(self, worker_id: str, sha256: str, expires: int) -> str:
        message = b"\0".join((b"easel-share-1", worker_id.encode(), sha256.encode(), str(expires).encode()))
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # --- the server ------------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        worker, expires, token = (request.query.get(k, "") for k in ("w", "e", "t"))
        if not (_SHA256.fullmatch(sha256) and expires.isdigit() and worker and len(token) == 64):
            return self._refuse(request, "a malformed request")
        if not hmac.compare_digest(self._token(worker, sha256, int(expires)), token):
            return self._refuse(request, "a wrong token")
        if int(expires) < time.time():
            return self._refuse(request, f"an expired token (worker {worker})")
        with self._lock:
            path = self._offered.get(sha256)
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text="not offered\n")
        self._on_served(_asked_bytes(request, path.stat().st_size))
        log.info("model share: %s [%s] to worker %s (%s)", path.name, sha256[:10], worker, request.headers.get("Range", "whole"))
        return web.FileResponse(path, chunk_size=1 << 20)  # Range and If-Range answered as HTTP says

    def _refuse(self, request: web.Request, why: str) -> web.StreamResponse:
        self._on_refused()
        log.warning("model share refused %s from %s", why, request.remote)
        raise web.HTTPForbidden(text="refused\n")


def file_size(path: str) -> int:
    """The size of a single model file the share can serve; -1 for anything else (a diffusers
    folder, a file gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return -1
    return st.st_size if stat.S_ISREG(st.st_mode) and Path(path).suffix.lower() in MODEL_SUFFIXES else -1


def _asked_bytes(request: web.Request, size: int) -> int:
    """The bytes a request's Range asks for (the whole file without one)."""
    try:
        asked = request.http_range
    except ValueError:  # a malformed Range: FileResponse answers it
        return 0
    start, stop = asked.start or 0, asked.stop
    if start < 0:  # bytes=-N: the last N
        return min(size, -start)
    return max(0, min(size, stop if stop is not None else size) - start)


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return 0

