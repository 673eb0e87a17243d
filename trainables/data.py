"""Datasets: verified downloads, character LM corpora, the synthetic next-token corpus and MNIST.

* Tiny Shakespeare / text8 / any text file (Appendix C.4.1): character vocabulary = the sorted
  unique characters of the whole corpus, contiguous 90/10 train/validation split, next-character
  prediction with teacher forcing on random contiguous blocks.
* Synthetic next-token corpus (Appendix C.3.6): V=256, L=128, 4096 sequences; the generator itself
  is ours (see :func:`synthetic_corpus`).
* MNIST (Appendix E.2.1): Keras ``mnist.npz``, normalised with mean 0.1307 / std 0.3081, one channel
  dimension, deterministic 50k/10k train/validation split of the 60k training images, 10k test.

Downloads go to :func:`cache_dir` and are checked against a pinned digest; every randomness used
for batching comes from a caller-supplied CPU ``torch.Generator`` so it can be checkpointed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from tqdm import tqdm

from signlock.trainables.config import DataConfig
from signlock.trainables.errors import ConfigError, DatasetError

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_OFFLINE_HINT = (
    "pass data.path=/local/file or set SIGNLOCK_CACHE to a folder with a copy of {filename}; "
    "the offline default dataset is 'synthetic'"
)

MNIST_MEAN = 0.1307  # E.2.1
MNIST_STD = 0.3081  # E.2.1
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


# --------------------------------------------------------------------------------------------
# Registry and verified download
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """A downloadable dataset file pinned by digest.

    ``sha256`` is preferred; ``sha1`` is accepted only where no public SHA-256 could be found
    (text8). ``member`` names the file inside a zip archive, if the download is one.
    """

    url: str
    filename: str
    sha256: str | None
    sha1: str | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        if self.sha256 is None and self.sha1 is None:
            raise ValueError(f"RemoteFile {self.filename}: give sha256 or sha1")
        for algo, digest, width in (("sha256", self.sha256, 64), ("sha1", self.sha1, 40)):
            if digest is not None and (len(digest) != width or not _is_hex(digest)):
                raise ValueError(f"RemoteFile {self.filename}: {algo} must be {width} hex digits")

    @property
    def algorithm(self) -> str:
        """The hash algorithm used to verify this file."""
        return "sha256" if self.sha256 is not None else "sha1"

    @property
    def digest(self) -> str:
        """The expected hex digest under :attr:`algorithm`."""
        return (self.sha256 or self.sha1 or "").lower()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


DATASETS: dict[str, RemoteFile] = {
    # SHA-256 computed from a copy of this exact file (1,115,394 bytes, 65 distinct characters).
    "tinyshakespeare": RemoteFile(
        url=(
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
            "tinyshakespeare/input.txt"
        ),
        filename="tinyshakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    # No public SHA-256 was found for text8.zip (31,344,016 bytes). The SHA-1 below is the one
    # pinned by Apache MXNet GluonNLP (gluonnlp/data/corpora/large_text_compression_benchmark.py,
    # ``archive_file = ('text8.zip', '6c70299b...')``); not re-verified against a download here.
    "text8": RemoteFile(
        url="http://mattmahoney.net/dc/text8.zip",
        filename="text8.zip",
        sha256=None,
        sha1="6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e",
        member="text8",
    ),
    # Keras' own pin: keras/datasets/mnist.py, get_file(..., file_hash="731c5ac6...").
    "mnist": RemoteFile(
        url="https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
        filename="mnist.npz",
        sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    ),
}


def cache_dir(configured: str | None = None) -> Path:
    """Download cache: ``configured`` (``data.cache_dir``), else ``$SIGNLOCK_CACHE``, else
    ``~/.cache/signlock``."""
    chosen = configured or os.environ.get("SIGNLOCK_CACHE") or "~/.cache/signlock"
    return Path(chosen).expanduser()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    hasher = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def fetch(name: str, *, cache: str | None = None, url: str | None = None) -> Path:
    """Return the local path of registry dataset ``name``, downloading and verifying it if needed.

    A cached copy is used only when its digest matches the registry; otherwise the file is
    downloaded from ``url`` (default: the registry URL) into a temporary file next to the cache
    entry, verified, and atomically renamed into place. A failed download or a digest mismatch
    raises :class:`DatasetError` and leaves nothing behind.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))}")
    target = cache_dir(cache) / spec.filename
    if target.is_file() and file_digest(target, spec.algorithm) == spec.digest:
        return target
    source = url or spec.url
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create cache folder {target.parent}: {exc}") from exc
    _download_verified(name, spec, source, target)
    return target


def _download_verified(name: str, spec: RemoteFile, source: str, target: Path) -> None:
    # A unique sibling (same filesystem, so os.replace is atomic); "xb" honours the umask.
    tmp = target.with_name(f".{spec.filename}.{uuid.uuid4().hex}.part")
    try:
        with tmp.open("xb") as out:
            actual = _stream(name, spec, source, out)
        if actual != spec.digest:
            raise DatasetError(
                f"checksum mismatch for {spec.filename} downloaded from {source}: expected "
                f"{spec.algorithm} {spec.digest}, got {actual}; the download was deleted"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _stream(name: str, spec: RemoteFile, source: str, out: BinaryIO) -> str:
    """Copy ``source`` into ``out`` and return its digest; network errors -> DatasetError."""
    hasher = hashlib.new(spec.algorithm)
    try:
        with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(total, spec.filename) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        hint = _OFFLINE_HINT.format(filename=spec.filename)
        raise DatasetError(f"could not download {name} from {source} ({reason}); {hint}") from exc
    return hasher.hexdigest()


def _progress(total: int | None, label: str) -> tqdm:
    """A byte progress bar, shown only when stderr is a terminal."""
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
    )


# --------------------------------------------------------------------------------------------
# Language-model data (C.4.1 character corpora, C.3.6 synthetic corpus)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMData:
    """Token data for next-token prediction.

    ``stream``: ``train``/``val`` are 1-D token streams (character corpora, C.4.1).
    ``sequences``: 2-D ``(n_seq, seq_len + 1)`` rows (synthetic corpus, C.3.6).
    ``itos`` maps token id -> character for character corpora, ``None`` for synthetic data.
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    layout: Literal["stream", "sequences"]
    itos: list[str] | None


def load_lm_data(cfg: DataConfig) -> LMData:
    """Load the language-modelling dataset named by ``cfg.dataset``.

    Character corpora (tinyshakespeare, text8, text-file) are read from ``cfg.path`` if given, else
    fetched into ``cfg.cache_dir``; text8 is read from member ``text8`` of ``text8.zip`` (a plain
    extracted ``text8`` file works too). Vocabulary and the contiguous split follow C.4.1.
    ``synthetic`` builds :func:`synthetic_corpus` and splits its rows by index (first rows train).
    """
    if cfg.dataset == "mnist":
        raise ConfigError("data.dataset", cfg.dataset, "a language-model dataset (use load_mnist)")
    if cfg.dataset == "synthetic":
        return _synthetic_lm_data(cfg)
    ids, itos = encode_text(_read_corpus(cfg))
    n_train = _train_size(len(ids), cfg.val_fraction)
    return LMData(
        train=ids[:n_train], val=ids[n_train:], vocab_size=len(itos), layout="stream", itos=itos
    )


def _synthetic_lm_data(cfg: DataConfig) -> LMData:
    rows = synthetic_corpus(
        vocab=cfg.synthetic_vocab,
        seq_len=cfg.synthetic_seq_len,
        n_sequences=cfg.synthetic_sequences,
        seed=cfg.synthetic_seed,
    )
    n_train = _train_size(len(rows), cfg.val_fraction)
    return LMData(
        train=rows[:n_train],
        val=rows[n_train:],
        vocab_size=cfg.synthetic_vocab,
        layout="sequences",
        itos=None,
    )


def _train_size(n: int, val_fraction: float) -> int:
    """First ``int(n * (1 - val_fraction))`` items train, the rest validation (C.4.1: 90/10)."""
    n_train = int(n * (1.0 - val_fraction))
    if not 1 <= n_train <= n - 1:
        raise ConfigError(
            "data.val_fraction",
            val_fraction,
            f"a fraction leaving both splits non-empty for {n} items",
        )
    return n_train


def _read_corpus(cfg: DataConfig) -> str:
    spec = DATASETS.get(cfg.dataset)
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DatasetError(f"data.path={cfg.path!r} is not a file")
    elif spec is not None:
        path = fetch(cfg.dataset, cache=cfg.cache_dir)
    else:
        raise DatasetError(f"data.dataset={cfg.dataset!r} needs data.path")
    member = spec.member if spec is not None else None
    text = _read_text(path, member)
    if not text:
        raise DatasetError(f"{path} contains no text")
    return text


def _read_text(path: Path, member: str | None) -> str:
    """UTF-8 text of ``path`` (byte-exact, no newline translation) or of a zip ``member``."""
    try:
        if member is not None and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return archive.read(member).decode("utf-8")
        return path.read_bytes().decode("utf-8")
    except KeyError as exc:
        raise DatasetError(f"{path}: zip archive has no member {member!r}") from exc
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read text from {path}: {exc}") from exc


def encode_text(text: str) -> tuple[torch.Tensor, list[str]]:
    """Character-encode ``text``: vocabulary = sorted unique characters (C.4.1), ids int64.

    Vectorised through numpy (Latin-1 bytes when possible, else UTF-32 code points) so that
    text8's 100M characters encode in seconds.
    """
    try:
        codes = np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    except UnicodeEncodeError:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    present = np.flatnonzero(np.bincount(codes))
    lookup = np.zeros(int(present[-1]) + 1 if len(present) else 1, dtype=np.int64)
    lookup[present] = np.arange(len(present), dtype=np.int64)
    ids = torch.from_numpy(lookup[codes])
    return ids, [chr(int(c)) for c in present]


def decode(ids: torch.Tensor, itos: list[str]) -> str:
    """Inverse of :func:`encode_text` for a 1-D id tensor."""
    return "".join(itos[i] for i in ids.tolist())


def lm_batch(
    data: LMData,
    split: Literal["train", "val"],
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random teacher-forcing batch ``(x, y)`` with ``y = x`` shifted left by one (C.3.6, C.4.1).

    ``stream``: ``batch_size`` contiguous blocks of ``seq_len + 1`` tokens, starts uniform in
    ``[0, len - seq_len - 1]``, never crossing the end of the split. ``sequences``: ``batch_size``
    rows drawn with replacement; ``seq_len`` is ignored. All randomness comes from ``generator``
    (a CPU generator); results are contiguous CPU int64 tensors.
    """
    if split not in ("train", "val"):
        raise ConfigError("split", split, "'train' or 'val'")
    if batch_size < 1:
        raise ConfigError("data.batch_size", batch_size, "an integer >= 1")
    tokens = data.train if split == "train" else data.val
    if data.layout == "sequences":
        blocks = _random_rows(tokens, batch_size, generator, split)
    else:
        blocks = _random_blocks(tokens, batch_size, seq_len, generator, split)
    return blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous()


def _random_blocks(
    stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator, split: str
) -> torch.Tensor:
    n = stream.numel()
    if seq_len < 1 or n < seq_len + 1:
        raise ConfigError(
            "data.seq_len",
            seq_len,
            f"an integer in [1, {n - 1}] (the {split} split has {n} tokens)",
        )
    starts = torch.randint(0, n - seq_len, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    return stream[starts[:, None] + offsets[None, :]]


def _random_rows(
    rows: torch.Tensor, batch_size: int, generator: torch.Generator, split: str
) -> torch.Tensor:
    if rows.shape[0] < 1 or rows.shape[1] < 2:
        raise ConfigError(
            "data.seq_len", rows.shape[1] - 1, f"at least one {split} sequence of >= 2 tokens"
        )
    picks = torch.randint(0, rows.shape[0], (batch_size,), generator=generator)
    return rows[picks]


def synthetic_corpus(
    vocab: int = 256, seq_len: int = 128, n_sequences: int = 4096, seed: int = 0
) -> torch.Tensor:
    """The synthetic next-token corpus of C.3.6: ``(n_sequences, seq_len + 1)`` int64 in
    ``[0, vocab)``.

    C.3.6 fixes only V=256, L=128 and 4096 sequences; the generating process is our choice and is
    made learnable: a sparse first-order Markov chain. With a CPU generator seeded by ``seed``,
    each token gets ``k = min(8, vocab)`` distinct successors (a random subset) with
    Dirichlet(1, ..., 1) weights (normalised Exp(1) draws); the first token of a sequence is
    uniform, each next token is drawn from its predecessor's successors by inverse-CDF sampling
    of ``torch.rand`` draws (all drawn up front, shape ``(seq_len, n_sequences)``). The
    conditional entropy H(next | current) is then about H_k - 1 ~ 1.7 nats (k=8), far below
    log(256) ~ 5.5 nats, so a model can learn it, and the output is a pure function of the
    arguments.
    """
    for field_name, value in (
        ("data.synthetic_vocab", vocab),
        ("data.synthetic_seq_len", seq_len),
        ("data.synthetic_sequences", n_sequences),
    ):
        if value < 1:
            raise ConfigError(field_name, value, "an integer >= 1")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    successors, cdf = (t.numpy() for t in _markov_chain(vocab, min(8, vocab), gen))
    first = torch.randint(0, vocab, (n_sequences,), generator=gen).numpy()
    uniforms = torch.rand((seq_len, n_sequences, 1), generator=gen, dtype=torch.float64).numpy()
    out = np.empty((n_sequences, seq_len + 1), dtype=np.int64)
    out[:, 0] = first
    last = cdf.shape[1] - 1
    for t in range(seq_len):  # numpy: tiny per-step ops, no thread-pool overhead
        current = out[:, t]
        choice = np.minimum((uniforms[t] > cdf[current]).sum(axis=1), last)
        out[:, t + 1] = successors[current, choice]
    return torch.from_numpy(out)


def _markov_chain(vocab: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Successor table ``(vocab, k)`` and per-token cumulative probabilities ``(vocab, k)``."""
    successors = torch.rand((vocab, vocab), generator=gen).argsort(dim=1)[:, :k]
    weights = -torch.log1p(-torch.rand((vocab, k), generator=gen, dtype=torch.float64))
    probs = weights / weights.sum(dim=1, keepdim=True)
    return successors, probs.cumsum(dim=1)


# --------------------------------------------------------------------------------------------
# MNIST (E.2.1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageData:
    """Normalised MNIST (E.2.1): images float32 ``(N, 1, 28, 28)``, labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_mnist(cfg: DataConfig, *, split_seed: int = 0) -> ImageData:
    """Load Keras-format ``mnist.npz`` (``cfg.path`` or the verified download) as in E.2.1.

    The npz is opened with ``allow_pickle=False``. The 60k training images are shuffled with a
    generator seeded by ``split_seed``; the first ``n_val = round(n / 6)`` shuffled indices form
    the validation set (10k of 60k, as in E.2.1; small files keep the 1/6 proportion), the rest
    train. Both index sets are sorted, so the tensors keep the file's order. Pixels become
    ``(x / 255 - 0.1307) / 0.3081`` with a channel dimension.
    """
    if cfg.dataset != "mnist":
        raise ConfigError("data.dataset", cfg.dataset, "'mnist' for load_mnist")
    path = (
        Path(cfg.path).expanduser() if cfg.path is not None else fetch("mnist", cache=cfg.cache_dir)
    )
    arrays = _read_mnist_npz(path)
    train_idx, val_idx = _mnist_split(len(arrays["x_train"]), split_seed, path)
    x_all, y_all = _normalise(arrays["x_train"]), _labels(arrays["y_train"])
    return ImageData(
        x_train=x_all[train_idx],
        y_train=y_all[train_idx],
        x_val=x_all[val_idx],
        y_val=y_all[val_idx],
        x_test=_normalise(arrays["x_test"]),
        y_test=_labels(arrays["y_test"]),
    )


def _read_mnist_npz(path: Path) -> dict[str, np.ndarray]:
    """The four Keras arrays, read without unpickling and validated (one-line DatasetError)."""
    if not path.is_file():
        raise DatasetError(f"MNIST file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path} is not an npz archive (expected Keras-format mnist.npz)")
        with loaded as npz:
            arrays = {k: npz[k] for k in MNIST_KEYS if k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split())
        raise DatasetError(f"cannot read {path} as a Keras-format mnist.npz: {reason}") from exc
    missing = [k for k in MNIST_KEYS if k not in arrays]
    if missing:
        raise DatasetError(
            f"{path} is not a Keras-format mnist.npz: missing "
            f"{', '.join(missing)} (expected {', '.join(MNIST_KEYS)})"
        )
    _check_mnist_arrays(arrays, path)
    return arrays


def _check_mnist_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DatasetError(
                f"{path}: x_{part} must be uint8 (N, 28, 28), got {x.dtype} {x.shape}"
            )
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(
                f"{path}: y_{part} must be integer ({x.shape[0]},), got {y.dtype} {y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DatasetError(f"{path}: y_{part} labels must lie in [0, 9]")


def _mnist_split(n: int, split_seed: int, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, val) indices: val = first round(n/6) of a seeded permutation (E.2.1)."""
    n_val = round(n / 6)
    if n_val < 1 or n_val >= n:
        raise DatasetError(f"{path}: {n} training images are too few to hold out a validation set")
    perm = torch.randperm(n, generator=torch.Generator(device="cpu").manual_seed(split_seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _normalise(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), (x/255 - mean)/std (E.2.1)."""
    scaled = torch.from_numpy(x).to(torch.float32).div_(255.0)
    return scaled.sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.int64))


def image_batch(
    data: ImageData, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random training batch, indices drawn uniformly WITH replacement from ``generator``
    (so the stream of batches is a pure function of the generator state)."""
    if batch_size < 1:
        raise ConfigError("data.batch_size", batch_size, "an integer >= 1")
    picks = torch.randint(0, len(data.y_train), (batch_size,), generator=generator)
    return data.x_train[picks], data.y_train[picks]


def iter_eval_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential, non-overlapping batches covering ``(x, y)`` exactly once (last may be short)."""
    if batch_size < 1:
        raise ConfigError("data.eval_batch_size", batch_size, "an integer >= 1")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


__all__ = [
    "DATASETS",
    "MNIST_MEAN",
    "MNIST_STD",
    "ImageData",
    "LMData",
    "RemoteFile",
    "cache_dir",
    "decode",
    "encode_text",
    "fetch",
    "file_digest",
    "image_batch",
    "iter_eval_batches",
    "lm_batch",
    "load_lm_data",
    "load_mnist",
    "synthetic_corpus",
]
