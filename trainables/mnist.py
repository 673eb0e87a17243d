"""MNIST (Appendix E.2.1): Keras ``mnist.npz``, normalised with mean 0.1307 / std 0.3081, one
channel dimension, deterministic 50k/10k train/validation split of the 60k training images, 10k
test.

Owns :class:`ImageData` and :func:`load_mnist` (reading the npz without unpickling and checking its
arrays, the split, the normalisation), random training batches (:func:`image_batch`) and
sequential evaluation batches (:func:`iter_eval_batches`). The file comes from ``data.path`` or a
verified download through :mod:`signlock.trainables.downloads`; batch randomness comes from a
caller-supplied CPU ``torch.Generator`` so it can be checkpointed.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from signlock.trainables.config import DataConfig
from signlock.trainables.downloads import fetch
from signlock.trainables.errors import ConfigError, DatasetError, InputNotFoundError

DATASET = "mnist"  # data.dataset of this loader (and the download registry's name)
MNIST_MEAN = 0.1307  # E.2.1
MNIST_STD = 0.3081  # E.2.1
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


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
    if cfg.dataset != DATASET:
        raise ConfigError("data.dataset", cfg.dataset, f"{DATASET!r} for load_mnist")
    path = (
        Path(cfg.path).expanduser() if cfg.path is not None else fetch(DATASET, cache=cfg.cache_dir)
    )
    if not path.is_file():
        raise InputNotFoundError(cfg.path)
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
    "MNIST_MEAN",
    "MNIST_STD",
    "ImageData",
    "image_batch",
    "iter_eval_batches",
    "load_mnist",
]
