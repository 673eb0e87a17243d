"""Verified dataset downloads: the registry of pinned remote files, the download cache and
:func:`fetch`.

Owns the cache folder (:func:`cache_dir`), :class:`RemoteFile` and the :data:`DATASETS` registry,
file checksums, and the streaming download that is verified against the pinned digest (with a
byte progress bar on a terminal) before it is atomically moved into the cache. A failed download
says how to work offline.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from signlock.trainables.errors import DatasetError

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_OFFLINE_HINT = (
    "pass data.path=/local/file or set SIGNLOCK_CACHE to a folder with a copy of {filename}; "
    "the offline default dataset is 'synthetic'"
)


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


__all__ = [
    "DATASETS",
    "RemoteFile",
    "cache_dir",
    "fetch",
    "file_digest",
]
