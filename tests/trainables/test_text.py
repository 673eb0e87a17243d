"""Tests of signlock.trainables.text: character corpora (C.4.1), lm_batch and the synthetic
corpus (C.3.6), against real files."""

from __future__ import annotations

import math
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from signlock.trainables.config import DataConfig
from signlock.trainables.downloads import DATASETS
from signlock.trainables.errors import ConfigError, DatasetError, InputNotFoundError
from signlock.trainables.text import LMData, decode, lm_batch, load_lm_data, synthetic_corpus

TS_LEN = 1_115_394  # bytes == characters in Tiny Shakespeare (all ASCII)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Character corpora (C.4.1)
# ------------------------------------------------------------------------------------------------


def test_load_lm_data_fetches_through_cache(tinyshakespeare_path: Path, tmp_path: Path) -> None:
    shutil.copy(tinyshakespeare_path, tmp_path / DATASETS["tinyshakespeare"].filename)
    lm = load_lm_data(DataConfig(dataset="tinyshakespeare", cache_dir=str(tmp_path)))
    assert lm.vocab_size == 65


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
    with pytest.raises(InputNotFoundError, match=r"not found: .*nope\.txt"):
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
