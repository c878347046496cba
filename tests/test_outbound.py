"""Downloads reach public addresses only: checked on every connection, redirect hops included, on the
address actually connected to. A real HTTP server on loopback stands in for both a model host and an
internal service; the addresses refused below are refused before any connection is attempted."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpcore
import pytest

from bot import outbound
from bot.checkpoints.download import Downloader
from bot.checkpoints.registry import CheckpointRegistry
from common.errors import EaselError
from tests.conftest import start_bot_py
from tests.helpers import eventually_sync


class Site:
    """Routes served by the loopback server: path -> (status, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[str] = []
        self.stall = threading.Event()  # released at teardown
        self.streaming = threading.Event()
        self.port = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def site() -> Iterator[Site]:
    state = Site()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path == "/slow.safetensors":
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                self.wfile.write(b"\0" * 65536)
                self.wfile.flush()
                state.streaming.set()
                state.stall.wait(30)
                return
            status, headers, body = state.routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.stall.set()
    server.shutdown()
    server.server_close()


def downloader(registry: CheckpointRegistry, *allowed: str, civitai_url: str | None = None) -> Downloader:
    policy = outbound.Policy(allowed_hosts=frozenset(allowed))
    extra = {"civitai_url": civitai_url} if civitai_url else {}
    return Downloader(registry, max_bytes=10**9, policy=policy, **extra)


INTERNAL = {
    "http://127.0.0.1:{port}/m.safetensors": "loopback",
    "http://localhost:{port}/m.safetensors": "loopback",
    "http://[::1]:{port}/m.safetensors": "loopback",
    "http://2130706433:{port}/m.safetensors": "loopback",  # 127.0.0.1 as one decimal number
    "http://0x7f.1:{port}/m.safetensors": "loopback",
    "http://[::ffff:127.0.0.1]:{port}/m.safetensors": "loopback",
    "http://0.0.0.0:{port}/m.safetensors": "unspecified",
    "http://169.254.169.254/latest/m.safetensors": "link-local",
    "http://10.0.0.1/m.safetensors": "private",
    "http://192.168.1.1/m.safetensors": "private",
    "http://[fd00::1]/m.safetensors": "private",
    "http://224.0.0.1/m.safetensors": "multicast",
    "http://240.0.0.1/m.safetensors": "reserved",
    "http://100.64.0.1/m.safetensors": "not a public address",
}


@pytest.mark.parametrize("template", sorted(INTERNAL))
async def test_internal_addresses_are_refused_by_rule(registry: CheckpointRegistry, site: Site, template: str) -> None:
    with pytest.raises(EaselError) as refused:
        await downloader(registry).download(template.format(port=site.port))
    message = str(refused.value)
    assert INTERNAL[template] in message and "\n" not in message, message
    assert site.requests == [] and sorted(p.name for p in registry.models_root.iterdir()) == []


async def test_an_allowed_host_downloads(registry: CheckpointRegistry, site: Site, tiny_dir: Path) -> None:
    site.routes["/m/fox.safetensors"] = (200, {}, (tiny_dir / "tiny-sd1.safetensors").read_bytes())
    entry = await downloader(registry, "127.0.0.1").download(site.url("/m/fox.safetensors"))
    assert entry.name == "fox" and site.requests == ["/m/fox.safetensors"]


@pytest.mark.parametrize(
    "location", ["http://localhost:{port}/m/fox.safetensors", "http://169.254.169.254/m/fox.safetensors"]
)
async def test_every_redirect_hop_is_checked(
    registry: CheckpointRegistry, site: Site, tiny_dir: Path, location: str
) -> None:
    site.routes["/go/fox.safetensors"] = (302, {"Location": location.format(port=site.port)}, b"")
    site.routes["/m/fox.safetensors"] = (200, {}, (tiny_dir / "tiny-sd1.safetensors").read_bytes())
    with pytest.raises(EaselError, match=r"is a (loopback|link-local) address"):
        await downloader(registry, "127.0.0.1").download(site.url("/go/fox.safetensors"))
    assert site.requests == ["/go/fox.safetensors"]  # the hop inside was never fetched
    assert sorted(p.name for p in registry.models_root.iterdir()) == []


async def test_a_civitai_download_url_pointing_inside_is_refused(registry: CheckpointRegistry, site: Site) -> None:
    version = {
        "id": 7,
        "model": {"type": "Checkpoint"},
        "files": [{"name": "m.safetensors", "primary": True, "downloadUrl": site.url("/m.safetensors", "localhost")}],
    }
    site.routes["/api/v1/model-versions/7"] = (200, {}, json.dumps(version).encode())
    with pytest.raises(EaselError, match=r"localhost \(127\.0\.0\.1\) is a loopback address"):
        await downloader(registry, "127.0.0.1", civitai_url=site.url("")).download("civitai:7")
    assert site.requests == ["/api/v1/model-versions/7"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>not json</html>", "not usable JSON"),
        (b"[1, 2, 3]", "not a model version"),
        (
            b'{"id": 7, "model": {"type": "Checkpoint"}, "files": [{"name": "m.safetensors", "sizeKB": NaN, "downloadUrl": "x"}]}',
            "NaN",
        ),
        (b'{"id": 7, "files": "nope"}', "no file to download"),
        (
            b'{"id": 7, "files": [{"name": "m.safetensors", "downloadUrl": "ftp://x/m.safetensors"}]}',
            "not an http(s) URL",
        ),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    ],
)
async def test_odd_civitai_answers_are_one_line(
    registry: CheckpointRegistry, site: Site, body: bytes, reason: str
) -> None:
    site.routes["/api/v1/model-versions/7"] = (200, {}, body)
    with pytest.raises(EaselError) as refused:
        await downloader(registry, "127.0.0.1", civitai_url=site.url("")).download("civitai:7")
    assert reason in str(refused.value) and "\n" not in str(refused.value)


class RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        self.hosts.append(host)
        raise httpcore.ConnectError("recorded, not connected")


async def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    """DNS rebinding: a second lookup may answer 127.0.0.1, but there is no second lookup."""
    answers = [["93.184.216.34"], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    inner = RecordingBackend()
    backend = outbound.GuardedBackend(outbound.Policy(resolve=rebinding), inner)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("rebind.example", 80)
    assert inner.hosts == ["93.184.216.34"] and answers == [["127.0.0.1"]]


async def test_a_name_with_one_internal_address_among_public_ones_is_refused() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.1.2.3"]

    inner = RecordingBackend()
    backend = outbound.GuardedBackend(outbound.Policy(resolve=mixed), inner)
    with pytest.raises(outbound.AddressRefused, match=r"10\.1\.2\.3\) is a private address"):
        await backend.connect_tcp("mixed.example", 443)
    assert inner.hosts == []


async def test_two_downloads_of_one_name_never_share_a_file(
    registry: CheckpointRegistry, site: Site, tiny_dir: Path
) -> None:
    site.routes["/a/fox.safetensors"] = (200, {}, (tiny_dir / "tiny-sd1.safetensors").read_bytes())
    site.routes["/b/fox.safetensors"] = (200, {}, (tiny_dir / "tiny-sd2.safetensors").read_bytes())
    one = downloader(registry, "127.0.0.1")
    results = await asyncio.gather(
        one.download(site.url("/a/fox.safetensors")),
        one.download(site.url("/b/fox.safetensors")),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) <= 1 and all(isinstance(f, EaselError) for f in failures), failures
    assert sorted(p.name for p in registry.models_root.iterdir()) == ["fox.safetensors"]


def test_cli_download_refuses_loopback_in_one_line(cli, site: Site) -> None:
    r = cli("checkpoints", "download", site.url("/m.safetensors"))
    assert r.code == 1 and r.err.count("\n") == 1 and "127.0.0.1 is a loopback address" in r.err
    assert site.requests == []


def test_sigterm_during_a_download_leaves_nothing(env: Path, models: Path, site: Site) -> None:
    environment = {**os.environ, "EASEL_DOWNLOAD_ALLOW_HOSTS": "127.0.0.1"}
    proc = start_bot_py("checkpoints", "download", site.url("/slow.safetensors"), cwd=env, env=environment)
    try:
        assert site.streaming.wait(60), "the download never started"
        eventually_sync(lambda: any(models.iterdir()), "the download's temporary file appeared")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert sorted(p.name for p in models.iterdir()) == []
