"""Text corpora for language modelling: character corpora and the synthetic next-token corpus.

* Tiny Shakespeare / text8 / any text file (Appendix C.4.1): character vocabulary = the sorted
  unique characters of the whole corpus, contiguous 90/10 train/validation split, next-character
  prediction with teacher forcing on random contiguous blocks.
* Synthetic next-token corpus (Appendix C.3.6): V=256, L=128, 4096 sequences; the generator itself
  is ours (see :func:`synthetic_corpus`).

Owns :class:`LMData` and :func:`load_lm_data`, reading, encoding and decoding text, and
:func:`lm_batch`. Registry corpora are downloaded through :mod:`signlock.trainables.downloads`;
every randomness used for batching comes from a caller-supplied CPU ``torch.Generator`` so it can
be checkpointed.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from signlock.trainables.config import DataConfig
from signlock.trainables.downloads import DATASETS, fetch
from signlock.trainables.errors import ConfigError, DatasetError, InputNotFoundError

# What load_lm_data reads: the character corpora (C.4.1), any text file and the synthetic corpus.
LM_DATASETS = ("tinyshakespeare", "text8", "synthetic", "text-file")


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
    if cfg.dataset not in LM_DATASETS:
        allowed = ", ".join(map(repr, LM_DATASETS))
        raise ConfigError("data.dataset", cfg.dataset, f"a language-model dataset: {allowed}")
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
        if not path.exists():
            raise InputNotFoundError(cfg.path)
        if not path.is_file():
            raise ConfigError("data.path", cfg.path, "a file (this is a directory)")
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


__all__ = [
    "LMData",
    "decode",
    "encode_text",
    "lm_batch",
    "load_lm_data",
    "synthetic_corpus",
]
