"""Tests of signlock.trainables.downloads against real files and a real local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from signlock.trainables.downloads import DATASETS, RemoteFile, cache_dir, fetch
from signlock.trainables.errors import DatasetError

# ------------------------------------------------------------------------------------------------
# Local HTTP server (real sockets, no mocks)
# ------------------------------------------------------------------------------------------------


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``root``; records every request path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: list[str] = []
        hits = self.hits

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.running = True

    def url(self, name: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def stop(self) -> None:
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self.running = False


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "served"
    root.mkdir()
    srv = LocalServer(root)
    yield srv
    srv.stop()


@pytest.fixture
def unit_entry(monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    """Register a small test dataset ``unit`` whose pinned SHA-256 is that of ``payload``."""
    payload = bytes(range(256)) * 64
    spec = RemoteFile(
        url="http://127.0.0.1:9/unit.bin",
        filename="unit.bin",
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    monkeypatch.setitem(DATASETS, "unit", spec)
    return "unit", payload


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# fetch / cache
# ------------------------------------------------------------------------------------------------


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNLOCK_CACHE", str(tmp_path / "env"))
    assert cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("SIGNLOCK_CACHE")
    assert cache_dir() == Path("~/.cache/signlock").expanduser()


def test_fetch_downloads_verifies_then_uses_cache_offline(
    server: LocalServer, unit_entry: tuple[str, bytes], tmp_path: Path
) -> None:
    name, payload = unit_entry
    (server.root / "unit.bin").write_bytes(payload)
    cache = tmp_path / "cache"

    path = fetch(name, cache=str(cache), url=server.url("unit.bin"))
    assert path == cache / "unit.bin"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in cache.iterdir()) == ["unit.bin"]  # no temp file left
    assert server.hits == ["/unit.bin"]

    server.stop()
    assert fetch(name, cache=str(cache), url=server.url("unit.bin")) == path  # no network


def test_fetch_uses_signlock_cache_env(
    server: LocalServer,
    unit_entry: tuple[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, payload = unit_entry
    (server.root / "unit.bin").write_bytes(payload)
    monkeypatch.setenv("SIGNLOCK_CACHE", str(tmp_path / "envcache"))
    assert fetch(name, url=server.url("unit.bin")) == tmp_path / "envcache" / "unit.bin"


def test_fetch_replaces_corrupt_cache_entry(
    server: LocalServer, unit_entry: tuple[str, bytes], tmp_path: Path
) -> None:
    name, payload = unit_entry
    (server.root / "unit.bin").write_bytes(payload)
    (tmp_path / "unit.bin").write_bytes(b"truncated")
    path = fetch(name, cache=str(tmp_path), url=server.url("unit.bin"))
    assert path.read_bytes() == payload
    assert server.hits == ["/unit.bin"]


def test_fetch_checksum_mismatch_leaves_nothing(
    server: LocalServer, unit_entry: tuple[str, bytes], tmp_path: Path
) -> None:
    name, payload = unit_entry
    tampered = payload[:-1] + b"X"
    (server.root / "unit.bin").write_bytes(tampered)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as info:
        fetch(name, cache=str(cache), url=server.url("unit.bin"))
    message = str(info.value)
    assert "unit.bin" in message
    assert DATASETS[name].sha256 in message
    assert hashlib.sha256(tampered).hexdigest() in message
    assert list(cache.iterdir()) == []


def test_fetch_unreachable_is_one_line_with_fix(
    unit_entry: tuple[str, bytes], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/unit.bin"
    with pytest.raises(DatasetError) as info:
        fetch(unit_entry[0], cache=str(tmp_path), url=url)
    message = str(info.value)
    assert "\n" not in message
    assert url in message
    assert "data.path" in message
    assert "SIGNLOCK_CACHE" in message
    assert "synthetic" in message
    assert list(tmp_path.iterdir()) == []


def test_fetch_http_404_is_dataset_error(
    server: LocalServer, unit_entry: tuple[str, bytes], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"data\.path"):
        fetch(unit_entry[0], cache=str(cache), url=server.url("missing.bin"))
    assert list(cache.iterdir()) == []


def test_fetch_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="tinyshakespeare"):
        fetch("no-such-dataset", cache=str(tmp_path))


def test_registry_digests_are_well_formed() -> None:
    assert set(DATASETS) >= {"tinyshakespeare", "text8", "mnist"}
    assert DATASETS["text8"].member == "text8"
    for spec in DATASETS.values():
        assert len(spec.digest) in (40, 64)
        int(spec.digest, 16)
    with pytest.raises(ValueError):
        RemoteFile(url="http://x", filename="x", sha256="abc")


def test_tinyshakespeare_registry_digest_matches_real_file(
    server: LocalServer, tinyshakespeare_path: Path, tmp_path: Path
) -> None:
    shutil.copy(tinyshakespeare_path, server.root / "input.txt")
    path = fetch("tinyshakespeare", cache=str(tmp_path), url=server.url("input.txt"))
    assert path.read_bytes() == tinyshakespeare_path.read_bytes()
