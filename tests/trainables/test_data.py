"""Tests of signlock.trainables.data against real files and a real local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import math
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from signlock.trainables import data
from signlock.trainables.config import DataConfig
from signlock.trainables.data import (
    DATASETS,
    LMData,
    RemoteFile,
    cache_dir,
    decode,
    fetch,
    image_batch,
    iter_eval_batches,
    lm_batch,
    load_lm_data,
    load_mnist,
    synthetic_corpus,
)
from signlock.trainables.errors import ConfigError, DatasetError

TS_LEN = 1_115_394  # bytes == characters in Tiny Shakespeare (all ASCII)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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


def test_load_lm_data_fetches_through_cache(tinyshakespeare_path: Path, tmp_path: Path) -> None:
    shutil.copy(tinyshakespeare_path, tmp_path / DATASETS["tinyshakespeare"].filename)
    lm = load_lm_data(DataConfig(dataset="tinyshakespeare", cache_dir=str(tmp_path)))
    assert lm.vocab_size == 65


# ------------------------------------------------------------------------------------------------
# Character corpora (C.4.1)
# ------------------------------------------------------------------------------------------------


def test_tinyshakespeare_vocab_split_and_round_trip(tinyshakespeare_path: Path) -> None:
    text = tinyshakespeare_path.read_text(encoding="utf-8")
    lm = load_lm_data(DataConfig(dataset="tinyshakespeare", path=str(tinyshakespeare_path)))
    assert lm.layout == "stream"
    assert lm.vocab_size == 65 == len(lm.itos)
    assert lm.itos == sorted(set(text))
    assert lm.train.dtype == lm.val.dtype == torch.int64
    assert len(text) == TS_LEN
    assert lm.train.numel() == 1_003_854  # int(0.9 * 1_115_394)
    assert lm.val.numel() == TS_LEN - 1_003_854
    assert decode(lm.train, lm.itos) == text[:1_003_854]
    assert decode(lm.val, lm.itos) == text[1_003_854:]


def test_text_file_non_latin1_vocab(tmp_path: Path) -> None:
    text = "naïve ✓ café — ok\r\n" * 50
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    lm = load_lm_data(DataConfig(dataset="text-file", path=str(path), val_fraction=0.2))
    assert lm.itos == sorted(set(text))
    assert lm.train.numel() == int(len(text) * 0.8)
    assert decode(lm.train, lm.itos) + decode(lm.val, lm.itos) == text  # \r\n kept byte-exact


def test_text8_zip_member(tmp_path: Path) -> None:
    text = "anarchism originated as a term of abuse " * 30
    archive = tmp_path / "text8.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("text8", text)
    lm = load_lm_data(DataConfig(dataset="text8", path=str(archive)))
    assert lm.itos == sorted(set(text))
    assert decode(torch.cat([lm.train, lm.val]), lm.itos) == text


def test_missing_path_and_empty_text(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data\.path"):
        load_lm_data(DataConfig(dataset="text-file", path=str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DatasetError, match="no text"):
        load_lm_data(DataConfig(dataset="text-file", path=str(tmp_path / "empty.txt")))


# ------------------------------------------------------------------------------------------------
# lm_batch
# ------------------------------------------------------------------------------------------------


def _ramp_data() -> LMData:
    """train = 0..99, val = 100..129: every contiguous block is an arithmetic run of step 1."""
    stream = torch.arange(130)
    return LMData(train=stream[:100], val=stream[100:], vocab_size=130, layout="stream", itos=None)


@pytest.mark.parametrize("split", ["train", "val"])
def test_lm_batch_stream_blocks_are_contiguous_within_split(split: str) -> None:
    lm = _ramp_data()
    tokens = lm.train if split == "train" else lm.val
    x, y = lm_batch(lm, split, batch_size=4096, seq_len=8, generator=_gen(1))
    assert x.shape == y.shape == (4096, 8)
    assert x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x - x[:, :1], torch.arange(8).expand(4096, 8))  # contiguous substring
    lo, hi = int(tokens[0]), int(tokens[-1])
    assert int(x.min()) >= lo and int(y.max()) <= hi  # never crosses the split boundary
    starts = set((x[:, 0] - lo).tolist())
    assert starts == set(range(tokens.numel() - 8))  # uniform over [0, len - seq_len - 1]


def test_lm_batch_real_text_blocks_are_substrings(tinyshakespeare_path: Path) -> None:
    lm = load_lm_data(DataConfig(dataset="tinyshakespeare", path=str(tinyshakespeare_path)))
    val_text = decode(lm.val, lm.itos)
    x, y = lm_batch(lm, "val", batch_size=16, seq_len=64, generator=_gen(3))
    for row_x, row_y in zip(x, y, strict=True):
        block = decode(row_x, lm.itos) + decode(row_y[-1:], lm.itos)
        assert block in val_text
        assert decode(row_y, lm.itos) == block[1:]


def test_lm_batch_exact_fit_and_too_short() -> None:
    lm = _ramp_data()
    x, y = lm_batch(lm, "val", batch_size=4, seq_len=29, generator=_gen())
    assert torch.equal(x, torch.arange(100, 129).expand(4, 29))
    assert torch.equal(y, torch.arange(101, 130).expand(4, 29))
    with pytest.raises(ConfigError) as info:
        lm_batch(lm, "val", batch_size=4, seq_len=30, generator=_gen())
    assert info.value.field == "data.seq_len"


def test_lm_batch_randomness_only_from_generator() -> None:
    lm = _ramp_data()
    a = lm_batch(lm, "train", 32, 8, _gen(7))
    b = lm_batch(lm, "train", 32, 8, _gen(7))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    gen = _gen(7)
    first = lm_batch(lm, "train", 32, 8, gen)
    state = gen.get_state()
    second = lm_batch(lm, "train", 32, 8, gen)
    assert not torch.equal(first[0], second[0])
    gen.set_state(state)
    torch.manual_seed(12345)  # the global RNG must not matter
    assert torch.equal(lm_batch(lm, "train", 32, 8, gen)[0], second[0])


def test_lm_batch_sequences_layout() -> None:
    rows = synthetic_corpus(vocab=16, seq_len=10, n_sequences=40, seed=2)
    lm = LMData(train=rows[:36], val=rows[36:], vocab_size=16, layout="sequences", itos=None)
    x, y = lm_batch(lm, "val", batch_size=64, seq_len=999, generator=_gen())
    assert x.shape == y.shape == (64, 10)
    assert torch.equal(x[:, 1:], y[:, :-1])
    full = torch.cat([x, y[:, -1:]], dim=1)
    val_rows = {tuple(r) for r in lm.val.tolist()}
    assert {tuple(r) for r in full.tolist()} == val_rows  # only val rows, all 4 drawn


# ------------------------------------------------------------------------------------------------
# Synthetic corpus (C.3.6)
# ------------------------------------------------------------------------------------------------


def _conditional_entropy(rows: torch.Tensor, vocab: int) -> float:
    pairs = rows[:, :-1].reshape(-1) * vocab + rows[:, 1:].reshape(-1)
    joint = torch.bincount(pairs, minlength=vocab * vocab).double().view(vocab, vocab)
    joint /= joint.sum()
    cond = joint / joint.sum(dim=1, keepdim=True).clamp_min(1e-300)
    mask = joint > 0
    return float(-(joint[mask] * cond[mask].log()).sum())


def test_synthetic_corpus_shape_range_determinism_and_learnability() -> None:
    rows = synthetic_corpus()
    assert rows.shape == (4096, 129) and rows.dtype == torch.int64
    assert int(rows.min()) >= 0 and int(rows.max()) <= 255
    assert torch.equal(rows, synthetic_corpus(seed=0))
    assert not torch.equal(rows, synthetic_corpus(seed=1))
    h_cond = _conditional_entropy(rows, 256)
    assert h_cond < 0.5 * math.log(256)  # ~1.7 nats vs 5.55
    assert torch.unique(rows).numel() > 200  # not degenerate


def test_load_lm_data_synthetic_split() -> None:
    cfg = DataConfig(dataset="synthetic", synthetic_sequences=100, synthetic_seq_len=16)
    lm = load_lm_data(cfg)
    assert lm.layout == "sequences" and lm.itos is None and lm.vocab_size == 256
    rows = synthetic_corpus(vocab=256, seq_len=16, n_sequences=100, seed=0)
    assert torch.equal(lm.train, rows[:90]) and torch.equal(lm.val, rows[90:])
    with pytest.raises(ConfigError):
        load_lm_data(DataConfig(dataset="synthetic", synthetic_sequences=1))


# ------------------------------------------------------------------------------------------------
# MNIST (E.2.1)
# ------------------------------------------------------------------------------------------------


def _image_ids(x: torch.Tensor) -> list[int]:
    raw = ((x[:, 0, 0, 0] * data.MNIST_STD + data.MNIST_MEAN) * 255).round().long()
    return raw.tolist()


def test_mnist_split_sizes_dtypes_normalisation(tiny_mnist_npz: Path) -> None:
    images = load_mnist(DataConfig(dataset="mnist", path=str(tiny_mnist_npz)))
    assert images.x_train.shape == (50, 1, 28, 28)  # 60 - round(60/6)
    assert images.x_val.shape == (10, 1, 28, 28)
    assert images.x_test.shape == (12, 1, 28, 28)
    for x in (images.x_train, images.x_val, images.x_test):
        assert x.dtype == torch.float32
    for y in (images.y_train, images.y_val, images.y_test):
        assert y.dtype == torch.int64
    expected = (torch.tensor(105 / 255, dtype=torch.float32) - 0.1307) / 0.3081
    assert torch.allclose(images.x_test[5], expected.expand(1, 28, 28))
    train_ids, val_ids = _image_ids(images.x_train), _image_ids(images.x_val)
    assert sorted(train_ids + val_ids) == list(range(60))
    assert images.y_train.tolist() == [i % 10 for i in train_ids]
    assert images.y_val.tolist() == [i % 10 for i in val_ids]


def test_mnist_split_is_deterministic(tiny_mnist_npz: Path) -> None:
    cfg = DataConfig(dataset="mnist", path=str(tiny_mnist_npz))
    first, again = load_mnist(cfg), load_mnist(cfg, split_seed=0)
    other = load_mnist(cfg, split_seed=1)
    assert _image_ids(first.x_val) == _image_ids(again.x_val)
    assert _image_ids(first.x_val) != _image_ids(other.x_val)
    assert _image_ids(first.x_val) != list(range(10))  # actually shuffled


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good_arrays() -> dict[str, np.ndarray]:
    return {
        "x_train": np.zeros((12, 28, 28), np.uint8),
        "y_train": np.zeros(12, np.uint8),
        "x_test": np.zeros((3, 28, 28), np.uint8),
        "y_test": np.zeros(3, np.uint8),
    }


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"y_test": None}, "missing y_test"),
        ({"x_train": np.zeros((12, 28, 27), np.uint8)}, "x_train"),
        ({"x_test": np.zeros((3, 28, 28), np.float32)}, "x_test"),
        ({"y_train": np.zeros(11, np.uint8)}, "y_train"),
        ({"y_train": np.full(12, 10, np.uint8)}, "labels"),
        ({"y_train": np.array([object()] * 12, dtype=object)}, "cannot read"),  # no unpickling
    ],
)
def test_mnist_bad_npz(tmp_path: Path, change: dict[str, np.ndarray | None], needle: str) -> None:
    arrays = {**_good_arrays(), **change}
    path = _write_npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DatasetError, match=needle) as info:
        load_mnist(DataConfig(dataset="mnist", path=str(path)))
    assert "\n" not in str(info.value)


def test_mnist_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError):
        load_mnist(DataConfig(dataset="mnist", path=str(tmp_path / "junk.npz")))
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(DatasetError, match="not an npz"):
        load_mnist(DataConfig(dataset="mnist", path=str(tmp_path / "plain.npy")))


def test_image_batch_and_eval_batches(tiny_mnist_npz: Path) -> None:
    images = load_mnist(DataConfig(dataset="mnist", path=str(tiny_mnist_npz)))
    xb, yb = image_batch(images, 128, _gen(4))
    assert xb.shape == (128, 1, 28, 28) and yb.shape == (128,)
    assert torch.equal(image_batch(images, 128, _gen(4))[0], xb)
    assert set(_image_ids(xb)) <= set(_image_ids(images.x_train))
    batches = list(iter_eval_batches(images.x_test, images.y_test, 5))
    assert [len(b[0]) for b in batches] == [5, 5, 2]
    assert torch.equal(torch.cat([b[0] for b in batches]), images.x_test)
    assert torch.equal(torch.cat([b[1] for b in batches]), images.y_test)
