"""Tests of signlock.trainables.mnist (E.2.1) against real npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from signlock.trainables.config import DataConfig
from signlock.trainables.errors import DatasetError
from signlock.trainables.mnist import (
    MNIST_MEAN,
    MNIST_STD,
    image_batch,
    iter_eval_batches,
    load_mnist,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image_ids(x: torch.Tensor) -> list[int]:
    raw = ((x[:, 0, 0, 0] * MNIST_STD + MNIST_MEAN) * 255).round().long()
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
