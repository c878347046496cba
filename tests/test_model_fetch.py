"""Workers fetching the files they lack, by hash: the bot's real share (aiohttp on loopback) and the
worker's real fetcher (httpx), with their tokens, Range resumption, hash check and disk budget.
The whole path through Redis and remote worker processes is in tests/test_remote_workers.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from bot.generation.model_share import ModelShare, NeededFile, ObjectStore, ShareOptions
from common.protocol import FetchTicket
from gpu_worker.model_fetch import Fetcher, FetchError
from gpu_worker.model_index import ModelIndex


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def write(path: str | Path, data: bytes) -> None:
    Path(path).write_bytes(data)


@dataclasses.dataclass
class Counts:
    served: int = 0
    refused: int = 0


@pytest_asyncio.fixture
async def share() -> AsyncIterator[tuple[ModelShare, Counts]]:
    counts = Counts()

    def served(n: int) -> None:
        counts.served += n

    def refused() -> None:
        counts.refused += 1

    made = ModelShare(ShareOptions(serve=True, host="127.0.0.1", port=0), on_served=served, on_refused=refused)
    await made.start()
    yield made, counts
    await made.close()


def fetcher(folder: Path, budget: int = 10**9) -> Fetcher:
    folder.mkdir(exist_ok=True)
    index = ModelIndex(folder)
    index.scan()
    return Fetcher(index, budget, retry_first=0.0, clock=itertools.count().__next__)  # each use later than the last


def model_file(folder: Path, name: str, size: int, fill: int) -> NeededFile:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([fill]) * size)
    return NeededFile(f"checkpoint {path.stem}", sha256_of(path), str(path))


async def test_a_checkpoint_and_a_lora_are_fetched_by_hash_and_held(
    share: tuple[ModelShare, Counts], tiny_dir: Path, tiny_loras: Path, tmp_path: Path
) -> None:
    made, counts = share
    files = [
        NeededFile("checkpoint tiny-sd1", sha256_of(tiny_dir / "tiny-sd1.safetensors"), str(tiny_dir / "tiny-sd1.safetensors")),
        NeededFile("LoRA lora-sd1", sha256_of(tiny_loras / "lora-sd1.safetensors"), str(tiny_loras / "lora-sd1.safetensors")),
    ]
    tickets = made.tickets("worker-1", files)
    assert [t.size for t in tickets] == [len(read(f.path)) for f in files]
    worker = fetcher(tmp_path / "models")
    for ticket, file in zip(tickets, files, strict=True):
        path = await asyncio.to_thread(worker.fetch, ticket)
        assert path == tmp_path / "models" / "fetched" / f"{file.sha256}.safetensors"
        assert sha256_of(path) == file.sha256 and worker.index.path_for(file.sha256) == path
    assert set(worker.index.holds) == {f.sha256 for f in files}
    assert counts.served == sum(t.size for t in tickets) and counts.refused == 0
    assert not list((tmp_path / "models" / "fetched" / ".partial").iterdir())
    # A restarted worker knows them from its hash cache, without fetching again.
    again = ModelIndex(tmp_path / "models")
    assert again.scan() == 0 and set(again.holds) == {f.sha256 for f in files}


class CuttingProxy:
    """Between worker and share: the first response is cut after `cut` bytes (the TCP connection
    closed mid-body, as a dropped link does); every request's Range is kept."""

    def __init__(self, upstream: str, cut: int) -> None:
        self.upstream, self.cut = upstream, cut
        self.ranges: list[str | None] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.ranges.append(request.headers.get("Range"))
        headers = {"Range": request.headers["Range"]} if "Range" in request.headers else {}
        async with httpx.AsyncClient() as client:
            upstream = await client.get(self.upstream + request.path_qs, headers=headers)
        response = web.StreamResponse(status=upstream.status_code)
        for name in ("Content-Range", "Content-Length", "Accept-Ranges"):
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        await response.prepare(request)
        if len(self.ranges) == 1:
            await response.write(upstream.content[: self.cut])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(upstream.content)
        await response.write_eof()
        return response


def through(ticket: FetchTicket, base: str) -> FetchTicket:
    parts = [urlsplit(u) for u in ticket.urls]
    return dataclasses.replace(ticket, urls=tuple(urlunsplit(p._replace(netloc=urlsplit(base).netloc)) for p in parts))


async def test_a_cut_download_resumes_where_it_stopped(share: tuple[ModelShare, Counts], tmp_path: Path) -> None:
    made, _ = share
    file = model_file(tmp_path / "bot", "big.safetensors", 3_000_000, 7)
    [ticket] = made.tickets("worker-1", [file])
    proxy = CuttingProxy(made.url, cut=1_200_000)
    app = web.Application()
    app.router.add_get("/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        path = await asyncio.to_thread(fetcher(tmp_path / "models").fetch, through(ticket, f"http://127.0.0.1:{port}"))
    finally:
        await runner.cleanup()
    assert sha256_of(path) == file.sha256
    # The first request asked for the whole file; the second for what the cut left out, and no more.
    assert proxy.ranges[0] is None and len(proxy.ranges) == 2
    start = int(proxy.ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= 1_200_000


async def test_a_partial_file_left_by_a_stopped_worker_is_resumed(share: tuple[ModelShare, Counts], tmp_path: Path) -> None:
    made, counts = share
    file = model_file(tmp_path / "bot", "big.safetensors", 2_000_000, 9)
    [ticket] = made.tickets("worker-1", [file])
    worker = fetcher(tmp_path / "models")
    write(worker.partial / f"{file.sha256}.part", read(file.path)[:1_500_000])
    path = await asyncio.to_thread(worker.fetch, ticket)
    assert sha256_of(path) == file.sha256 and counts.served == 500_000


async def test_bytes_that_do_not_match_the_hash_are_refused_and_deleted(
    share: tuple[ModelShare, Counts], tmp_path: Path
) -> None:
    made, _ = share
    file = model_file(tmp_path / "bot", "changed.safetensors", 1_000_000, 1)
    [ticket] = made.tickets("worker-1", [file])
    write(file.path, bytes([2]) * 1_000_000)  # the bot's copy changed since it was hashed
    worker = fetcher(tmp_path / "models")
    with pytest.raises(FetchError, match=r"bytes fetched for checkpoint changed do not match its sha256 \[[0-9a-f]{10}\]: deleted"):
        await asyncio.to_thread(worker.fetch, ticket)
    assert not any(worker.folder.glob("*.safetensors")) and not any(worker.partial.iterdir())
    assert worker.index.holds == ()
    # A source that sends more than the file's size is cut off, and what it sent deleted.
    write(file.path, bytes([1]) * 1_000_000)
    with pytest.raises(FetchError, match="more bytes than the file's size"):
        await asyncio.to_thread(worker.fetch, dataclasses.replace(ticket, size=999_000))
    assert not list(worker.partial.iterdir())


async def test_the_share_serves_only_offered_files_to_the_token_s_worker(
    share: tuple[ModelShare, Counts], tmp_path: Path
) -> None:
    made, counts = share
    offered = model_file(tmp_path / "bot", "offered.safetensors", 1000, 3)
    other = model_file(tmp_path / "bot", "other.safetensors", 1000, 4)
    [ticket] = made.tickets("worker-1", [offered])
    url = urlsplit(ticket.urls[0])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}

    def address(path: str = url.path, **changed: object) -> str:
        return urlunsplit(url._replace(path=path, query=urlencode(query | changed)))

    async with httpx.AsyncClient() as client:
        assert (await client.get(ticket.urls[0])).content == read(offered.path)
        partial = await client.get(ticket.urls[0], headers={"Range": "bytes=100-199"})
        assert partial.status_code == 206 and partial.content == read(offered.path)[100:200]
        refused = [
            address(w="worker-2"),  # another worker's
            address(t="0" * 64),  # a wrong token
            address(e=int(query["e"]) + 1),  # an expiry it was not made for
            address(path=f"/models/{other.sha256}"),  # another file with this token
            address(t=""),  # no token
            urlunsplit(url._replace(query="")),
        ]
        for bad in refused:
            assert (await client.get(bad)).status_code == 403, bad
        assert counts.refused == len(refused)
        # A file never offered is not served even with a good token for it; nor a path.
        token = made._token("worker-1", other.sha256, int(query["e"]))
        assert (await client.get(address(path=f"/models/{other.sha256}", t=token))).status_code == 404
        for path in ("/models/..%2F..%2Fetc%2Fpasswd", f"/models/{offered.sha256}/../../secret", "/"):
            assert (await client.get(address(path=path))).status_code in (403, 404), path
    # An expired ticket: refused.
    made.options = dataclasses.replace(made.options, ticket_seconds=-10)
    [expired] = made.tickets("worker-1", [offered])
    async with httpx.AsyncClient() as client:
        assert (await client.get(expired.urls[0])).status_code == 403
    worker = fetcher(tmp_path / "models")
    with pytest.raises(FetchError, match=r"could not fetch checkpoint offered: 127\.0\.0\.1:\d+ answered 403"):
        await asyncio.to_thread(worker.fetch, expired)


async def test_the_budget_evicts_the_least_recently_used_fetched_file(share: tuple[ModelShare, Counts], tmp_path: Path) -> None:
    made, _ = share
    a, b, c = (model_file(tmp_path / "bot", f"{n}.safetensors", 400_000, i) for i, n in enumerate("abc"))
    worker = fetcher(tmp_path / "models", budget=1_000_000)
    own = tmp_path / "models" / "own.safetensors"  # the operator's: never counted, never removed
    own.write_bytes(b"o" * 900_000)
    worker.index.scan()
    [ta, tb, tc] = made.tickets("worker-1", [a, b, c])
    await asyncio.to_thread(worker.fetch, ta)
    await asyncio.to_thread(worker.fetch, tb)
    worker._used({a.sha256})  # a was read by a batch after b was fetched
    await asyncio.to_thread(worker.fetch, tc, {c.sha256})
    assert set(worker.index.holds) == {a.sha256, c.sha256, sha256_of(own)} and own.exists()
    # What the running batch reads is never removed: with a and c both needed, d does not fit.
    d = model_file(tmp_path / "bot", "d.safetensors", 400_000, 9)
    [td] = made.tickets("worker-1", [d])
    with pytest.raises(FetchError, match=r"no room to fetch checkpoint d \(0\.4 MB\): the fetch budget is 1\.0 MB, partly held by"):
        await asyncio.to_thread(worker.fetch, td, {a.sha256, c.sha256})
    big = model_file(tmp_path / "bot", "big.safetensors", 1_100_000, 5)
    [tbig] = made.tickets("worker-1", [big])
    with pytest.raises(FetchError, match="more than this worker's fetch budget"):
        await asyncio.to_thread(worker.fetch, tbig)


# --- an S3-compatible object store ---------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a loopback port (the S3 API over HTTP; it does not check signatures as AWS
    does), a bucket on it, and credentials in boto3's environment; its endpoint."""
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    ObjectStore("models", "easel/", endpoint)._client.create_bucket(Bucket="models")
    yield endpoint
    server.stop()


def test_share_push_uploads_registered_files_once_and_workers_fetch_them_from_the_store(
    s3: str, env: Path, add_tiny: Callable[..., Path], tiny_loras: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import main

    checkpoint = add_tiny("sd1")
    (env / "models" / "Lora").mkdir()
    lora = env / "models" / "Lora" / "lora-sd1.safetensors"
    lora.write_bytes((tiny_loras / "lora-sd1.safetensors").read_bytes())
    for name, value in {"EASEL_SHARE_S3_BUCKET": "models", "EASEL_SHARE_S3_PREFIX": "easel/", "EASEL_SHARE_S3_ENDPOINT": s3}.items():
        monkeypatch.setenv(name, value)
    assert main(["checkpoints", "scan"]) == 0 and main(["loras", "scan"]) == 0
    capsys.readouterr()
    assert main(["share", "push"]) == 0
    out = capsys.readouterr().out
    assert "pushed tiny-sd1 (" in out and f"as easel/{sha256_of(checkpoint)}" in out and "pushed lora-sd1 (" in out
    assert out.strip().endswith("2 pushed, 0 already in s3://models/easel/, 0 skipped")
    assert main(["share", "push"]) == 0
    assert capsys.readouterr().out.strip().endswith("0 pushed, 2 already in s3://models/easel/, 0 skipped")
    monkeypatch.setenv("EASEL_SHARE_S3_BUCKET", "no-such-bucket")
    assert main(["share", "push"]) == 1  # one line, no traceback
    assert "error: the object store did not take" in capsys.readouterr().err
    # The bot presigns; the worker fetches with no credentials of its own.
    share = ModelShare(ShareOptions(s3_bucket="models", s3_prefix="easel/", s3_endpoint=s3))
    tickets = share.tickets("worker-1", [NeededFile("checkpoint tiny-sd1", sha256_of(checkpoint), str(checkpoint))])
    assert [urlsplit(u).netloc for u in tickets[0].urls] == [urlsplit(s3).netloc]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    worker = fetcher(env / "worker-models")
    assert sha256_of(worker.fetch(tickets[0])) == sha256_of(checkpoint)


async def test_a_file_the_store_lacks_comes_from_the_bot_s_share(s3: str, tmp_path: Path) -> None:
    made = ModelShare(ShareOptions(serve=True, host="127.0.0.1", port=0, s3_bucket="models", s3_prefix="easel/", s3_endpoint=s3))
    await made.start()
    try:
        file = model_file(tmp_path / "bot", "unpushed.safetensors", 500_000, 6)
        [ticket] = made.tickets("worker-1", [file])
        assert [urlsplit(u).netloc for u in ticket.urls] == [urlsplit(s3).netloc, urlsplit(made.url).netloc]
        path = await asyncio.to_thread(fetcher(tmp_path / "models").fetch, ticket)
        assert sha256_of(path) == file.sha256
    finally:
        await made.close()


async def test_the_workers_of_one_machine_fetch_a_file_once(share: tuple[ModelShare, Counts], tmp_path: Path) -> None:
    """--devices cuda:0,cuda:1: one worker process per device, one models folder. Both are sent a
    batch that needs the same file: one fetches it, the other waits on its lock and finds it."""
    made, counts = share
    file = model_file(tmp_path / "bot", "shared.safetensors", 2_000_000, 8)
    [ticket] = made.tickets("worker-1", [file])
    first, second = fetcher(tmp_path / "models"), fetcher(tmp_path / "models")
    paths = await asyncio.gather(asyncio.to_thread(first.fetch, ticket), asyncio.to_thread(second.fetch, ticket))
    assert paths[0] == paths[1] and sha256_of(paths[0]) == file.sha256
    assert counts.served == 2_000_000  # fetched once
    assert first.index.path_for(file.sha256) == second.index.path_for(file.sha256) == paths[0]
    # `bot.py generate --broker` beside the bot: a share of its own on a free port, or none at a fixed address.
    assert ShareOptions(serve=True).for_command_line().port == 0
    assert not ShareOptions(serve=True, public_url="https://share.example").for_command_line().serve
