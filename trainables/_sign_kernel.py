"""Bit-level kernel of :class:`signlock.trainables.tracker.SignTracker` (private).

The stopping times are those of Definition 3.2 (paper Section 3.1; see the tracker's module
docstring). Tracked tensors are grouped by (device, dtype). Each :class:`Group` keeps all
per-scalar state in flat buffers and gathers the current weights with one
``torch.cat(..., out=...)``, upcast to float32 (float64 params stay float64); the thresholds are
rounded inward to that dtype so the comparisons are exact for the stored values.

Per scalar the state machine stores ``code = phase + 3·[sign(w_{σ_{k−1}}) < 0]`` (:func:`encode`):
``code % 3`` is its :class:`Phase`, ``code // 3`` the outer sign K compares against. At most one
transition per scalar and step is possible, so one event test per step, |w|·direction ≤ bound,
finds every transition. A few dense passes flag a superset of the events and zero crossings; the
exact logic then runs only on that (usually tiny) set (:func:`process_candidates`), at most
``CANDIDATE_CHUNK_WORDS`` mask words at a time so its temporaries stay bounded even when nearly
every scalar is flagged (the σ0 hits of the first observation).

The dense passes come in two forms computing the same flags: a few eager torch ops with
preallocated outputs (``work``, ``bits``), and :func:`dense_flags` compiled by ``torch.compile``
into one kernel that reads each per-scalar input once and writes only the mask (the default on
CUDA, where the eager form is bound by memory traffic: about 76 bytes moved per scalar and step
against about 23).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import torch

SparseBackend = Literal["auto", "numpy", "torch"]
SPARSE_BACKENDS: tuple[SparseBackend, ...] = ("auto", "numpy", "torch")


class Phase(IntEnum):
    """Which stopping time of Definition 3.2 a scalar waits for."""

    AWAIT_SIGMA0 = 0  # no |w_t| ≥ ρ yet
    AWAIT_TAU = 1  # outside Bd(ε) since σ_{k−1}: waits for |w_t| ≤ ε
    AWAIT_SIGMA = 2  # entered Bd(ε) at τ_k: waits for |w_t| ≥ ρ


N_PHASES = len(Phase)


def encode(phase: Phase, outer_negative: int) -> int:
    """The state code of a scalar in ``phase`` whose outer sign is ``−1`` iff ``outer_negative``."""
    return phase + N_PHASES * outer_negative


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


CANDIDATE_CHUNK_WORDS = 1 << 20  # mask words (8 scalars each) per process_candidates call

# Per-scalar buffers of a Group: name -> dtype ("compute": the group's compute dtype, "bits":
# the signed integer of that width). ``EAGER_ONLY`` are the eager dense passes' outputs.
PER_SCALAR_BUFFERS: dict[str, torch.dtype | str] = {
    "cur": "compute",
    "prev": "compute",
    "work": "compute",
    "bits": "bits",
    "direction": "compute",
    "neg_bound": "compute",
    "init_neg": torch.bool,
    "code": torch.int32,
    "k": torch.int32,
    "tau1": torch.int32,
    "crossings": torch.int32,
    "band_skips": torch.int32,
}
EAGER_ONLY = ("work", "bits")
MASK_BYTES_PER_SCALAR = 1  # int8, padded to whole int64 words


def resident_bytes_per_scalar(dtype: torch.dtype, fused: bool) -> int:
    """Bytes a Group keeps per tracked scalar of a tensor of ``dtype`` (the planner's figure)."""
    compute = compute_dtype(dtype)
    bits = torch.int64 if compute == torch.float64 else torch.int32
    sizes = {"compute": compute.itemsize, "bits": bits.itemsize}
    return MASK_BYTES_PER_SCALAR + sum(
        sizes[kind] if isinstance(kind, str) else kind.itemsize
        for name, kind in PER_SCALAR_BUFFERS.items()
        if not (fused and name in EAGER_ONLY)
    )


def negative(x: torch.Tensor) -> torch.Tensor:
    """[x < 0] by the sign bit, with −0.0 counted as positive (sign(0) = +1) and NaN by its bit."""
    return torch.signbit(x) & (x != 0)


def dense_flags(
    cur: torch.Tensor,
    prev: torch.Tensor,
    direction: torch.Tensor,
    neg_bound: torch.Tensor,
    mask: torch.Tensor,
    with_crossings: bool,
) -> None:
    """mask = event test | crossing test, as the eager passes compute them (see
    :meth:`Group._observe_candidates`); direction·|w| is exact (direction = ±1)."""
    flag = torch.signbit(neg_bound + direction * cur.abs())
    if with_crossings:
        flag = flag | (negative(cur) != negative(prev))
    mask.copy_(flag)


@functools.cache
def compiled_dense_flags() -> Any:
    """:func:`dense_flags` as one kernel (compiled on first use, for any length)."""
    return torch.compile(dense_flags, dynamic=True, fullgraph=True)


@dataclass(frozen=True)
class Thresholds:
    """Band/outer tests in the compute dtype, exact for every value representable in it.

    ``eps``/``rho`` are ε, ρ rounded inward (|w| ≤ ε ⇔ |w| ≤ eps, |w| ≥ ρ ⇔ |w| ≥ rho). The dense
    event test is ``neg_bound + direction·|w| < 0`` (a sign bit): :attr:`Phase.AWAIT_TAU` uses
    direction +1 and neg_bound = −next_up(eps); the other phases use direction −1 and
    neg_bound = next_down(rho).
    """

    eps: float
    rho: float
    nb_outside: float
    nb_inner: float

    @staticmethod
    def build(rho: float, eps: float, dtype: torch.dtype) -> Thresholds:
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        inf = np_dtype(np.inf)
        rho_c, eps_c = np_dtype(rho), np_dtype(eps)
        if float(rho_c) < rho:
            rho_c = np.nextafter(rho_c, inf)
        if float(eps_c) > eps:
            eps_c = np.nextafter(eps_c, np_dtype(0))
        nb_outside = -np.nextafter(eps_c, inf)
        nb_inner = np.nextafter(rho_c, np_dtype(0))
        return Thresholds(float(eps_c), float(rho_c), float(nb_outside), float(nb_inner))


def transition_tables(th: Thresholds) -> dict[str, list[Any]]:
    """The Definition 3.2 state machine as lookup tables indexed by key = 2·code + [w < 0].

    Entries: next code, K increment (Theorem 3.6: the outer sign at σ_k differs from the one at
    σ_{k−1}), whether it is a τ hit, and the next direction/neg_bound of the dense event test.
    """
    tables: dict[str, list[Any]] = {"next": [], "k_inc": [], "tau": [], "dir": [], "nb": []}
    for code in range(2 * N_PHASES):
        phase, outer_neg = Phase(code % N_PHASES), code // N_PHASES
        for neg in (0, 1):
            if phase is Phase.AWAIT_TAU:  # τ_k: enter the band, keep the outer sign
                nxt, k_inc = encode(Phase.AWAIT_SIGMA, outer_neg), 0
            else:  # σ0 or σ_k: back outside with the current sign
                nxt = encode(Phase.AWAIT_TAU, neg)
                k_inc = int(phase is Phase.AWAIT_SIGMA and neg != outer_neg)
            outside = nxt % N_PHASES == Phase.AWAIT_TAU
            tables["next"].append(nxt)
            tables["k_inc"].append(k_inc)
            tables["tau"].append(phase is Phase.AWAIT_TAU)
            tables["dir"].append(1.0 if outside else -1.0)
            tables["nb"].append(th.nb_outside if outside else th.nb_inner)
    return tables


@dataclass
class Segment:
    """One tracked tensor: its slice [start, start+size) of its group's flat buffers."""

    name: str
    tensor: torch.Tensor
    group: int
    local: int
    start: int
    size: int
    index: torch.Tensor | None

    def __post_init__(self) -> None:
        self._ptr = self.tensor.data_ptr()
        detached = self.tensor.detach()
        self._flat = detached.view(-1) if detached.is_contiguous() else None

    @property
    def stop(self) -> int:
        return self.start + self.size

    def flat_values(self) -> torch.Tensor:
        if self.tensor.data_ptr() != self._ptr:
            raise RuntimeError(
                f"tracked tensor {self.name!r} was replaced instead of updated in place; "
                "build a new SignTracker (and load_state_dict) after moving or recasting a model"
            )
        flat = self._flat if self._flat is not None else self.tensor.detach().reshape(-1)
        return flat if self.index is None else flat.index_select(0, self.index)


class Group:
    """Flat per-scalar state for the tracked tensors sharing one device and dtype.

    Dense passes run in torch. The sparse bookkeeping on the few candidate scalars runs on
    numpy views of the same memory for CPU groups (far lower per-call overhead) and in torch
    otherwise (``backend="auto"``); :func:`process_candidates` is written once for both.
    """

    def __init__(
        self,
        segments: list[Segment],
        rho: float,
        eps: float,
        backend: SparseBackend = "auto",
        fused: bool = False,
    ) -> None:
        self.segments = segments
        self.device = segments[0].tensor.device
        self.dtype = compute_dtype(segments[0].tensor.dtype)
        self.bits_dtype, self.sign_shift = (
            (torch.int64, 63) if self.dtype == torch.float64 else (torch.int32, 31)
        )
        self.fused = fused
        self.th = Thresholds.build(rho, eps, self.dtype)
        self.n = n = sum(s.size for s in segments)
        dev = self.device
        kinds = {"compute": self.dtype, "bits": self.bits_dtype}
        for name, kind in PER_SCALAR_BUFFERS.items():
            if fused and name in EAGER_ONLY:
                continue
            dtype = kinds[kind] if isinstance(kind, str) else kind
            setattr(self, name, torch.zeros(n, dtype=dtype, device=dev))
        # cur/prev: the latest two observations, swapped per step; code 0 is
        # encode(Phase.AWAIT_SIGMA0, 0); tau1 −1 until the first band hit.
        self.tau1.fill_(-1)
        self.mask = torch.zeros(-(-n // 8) * 8, dtype=torch.int8, device=dev)
        self.mask_head = self.mask[:n]
        self.mask_words = self.mask.view(torch.int64)
        if backend == "auto":
            backend = "numpy" if dev.type == "cpu" else "torch"
        self.sparse = SparseArrays.of(self, backend)
        self.reset_event_test()

    def reset_event_test(self) -> None:
        """direction/neg_bound from the phase: AWAIT_TAU waits for |w| ≤ ε, the others |w| ≥ ρ.
        Chunk by chunk, so the temporaries stay bounded on the largest models."""
        value = functools.partial(torch.tensor, dtype=self.dtype, device=self.device)
        outward, inward = value(1.0), value(-1.0)
        nb_outside, nb_inner = value(self.th.nb_outside), value(self.th.nb_inner)
        chunk = 8 * CANDIDATE_CHUNK_WORDS
        for start in range(0, self.n, chunk):
            part = slice(start, start + chunk)
            outside = self.code[part] % N_PHASES == int(Phase.AWAIT_TAU)
            torch.where(outside, outward, inward, out=self.direction[part])
            torch.where(outside, nb_outside, nb_inner, out=self.neg_bound[part])

    def record_initial(self) -> None:
        self._load()
        torch.lt(self.cur, 0, out=self.init_neg)
        self._observe_candidates(0, with_crossings=False)

    def observe(self, t: int) -> int:
        """Record observation t ≥ 1; returns the number of zero crossings t−1 → t."""
        self.cur, self.prev = self.prev, self.cur
        self.sparse.cur, self.sparse.prev = self.sparse.prev, self.sparse.cur
        self._load()
        return self._observe_candidates(t, with_crossings=True)

    def _load(self) -> None:
        torch.cat([s.flat_values() for s in self.segments], out=self.cur)
        if not self.fused:  # the fused pass tests signs with −0.0 as positive itself
            self.cur.add_(0.0)  # −0.0 + 0.0 = +0.0: afterwards the sign bit is exactly [w < 0]

    def _observe_candidates(self, t: int, *, with_crossings: bool) -> int:
        """Flag a superset of this step's events and zero crossings, then process them exactly.

        Per scalar, the sign bit of ``neg_bound + direction·|w|`` is its event test and the sign
        bit of cur XOR prev its crossing test. Their OR goes into one int8 per scalar, scanned
        eight scalars at a time through an int64 view.
        """
        if self.fused:
            compiled_dense_flags()(
                self.cur, self.prev, self.direction, self.neg_bound, self.mask_head, with_crossings
            )
        else:
            self._eager_dense_flags(with_crossings)
        words = torch.nonzero(self.mask_words)
        crossings = 0
        for start in range(0, len(words), CANDIDATE_CHUNK_WORDS):
            chunk = self.sparse.wrap(words[start : start + CANDIDATE_CHUNK_WORDS])
            crossings += process_candidates(self.sparse, chunk, t, with_crossings)
        return crossings

    def _eager_dense_flags(self, with_crossings: bool) -> None:
        torch.abs(self.cur, out=self.work)
        torch.addcmul(self.neg_bound, self.work, self.direction, out=self.work)
        work_bits = self.work.view(self.bits_dtype)
        if with_crossings:
            cur_bits, prev_bits = self.cur.view(self.bits_dtype), self.prev.view(self.bits_dtype)
            torch.bitwise_xor(cur_bits, prev_bits, out=self.bits)
            self.bits.bitwise_or_(work_bits)
            self.bits.bitwise_right_shift_(self.sign_shift)
        else:
            torch.bitwise_right_shift(work_bits, self.sign_shift, out=self.bits)
        self.mask_head.copy_(self.bits)

    def segment_counts(self) -> list[list[int]]:
        """Per segment: flips vs init, τ1 hits, #{K>0}, ΣK, zero crossings, band-skipping ones."""
        rows = []
        negative = self.cur < 0
        for s in self.segments:
            sl = slice(s.start, s.stop)
            k = self.k[sl]
            rows.append(
                torch.stack(
                    [
                        (negative[sl] != self.init_neg[sl]).sum(),
                        (self.tau1[sl] >= 0).sum(),
                        (k > 0).sum(),
                        k.sum(dtype=torch.int64),
                        self.crossings[sl].sum(dtype=torch.int64),
                        self.band_skips[sl].sum(dtype=torch.int64),
                    ]
                )
            )
        return torch.stack(rows).cpu().tolist()


_SPARSE_FIELDS = [
    "cur",
    "prev",
    "mask",
    "code",
    "k",
    "tau1",
    "crossings",
    "band_skips",
    "direction",
    "neg_bound",
]


@dataclass
class SparseArrays:
    """The per-scalar arrays the sparse step touches: numpy views (CPU) or the torch tensors."""

    xp: Any
    cur: Any
    prev: Any
    mask: Any
    code: Any
    k: Any
    tau1: Any
    crossings: Any
    band_skips: Any
    direction: Any
    neg_bound: Any
    lanes: Any
    tables: dict[str, Any]
    eps: float

    @staticmethod
    def of(group: Group, backend: Literal["numpy", "torch"]) -> SparseArrays:
        if backend not in ("numpy", "torch") or (backend == "numpy" and group.device.type != "cpu"):
            raise ValueError(f"sparse backend {backend!r} is not available on {group.device}")
        raw = transition_tables(group.th)
        dtypes = {
            "next": torch.int32,
            "k_inc": torch.int32,
            "tau": torch.bool,
            "dir": group.dtype,
            "nb": group.dtype,
        }
        tables = {
            key: torch.tensor(raw[key], dtype=dtypes[key], device=group.device) for key in raw
        }
        lanes = torch.arange(8, device=group.device)
        arrays = {name: getattr(group, name) for name in _SPARSE_FIELDS}
        if backend == "torch":
            return SparseArrays(torch, **arrays, lanes=lanes, tables=tables, eps=group.th.eps)
        return SparseArrays(
            np,
            **{name: value.numpy() for name, value in arrays.items()},
            lanes=lanes.numpy(),
            tables={key: value.numpy() for key, value in tables.items()},
            eps=group.th.eps,
        )

    def wrap(self, tensor: torch.Tensor) -> Any:
        return tensor.numpy() if self.xp is np else tensor


def process_candidates(a: SparseArrays, words: Any, t: int, with_crossings: bool) -> int:
    """Exact crossing bookkeeping and state-machine transitions on the flagged scalars.

    ``words`` are the (m, 1) indices of the int64 mask words with a flagged scalar; written with
    operations numpy arrays and torch tensors share. Returns the number of zero crossings.
    """
    cand = (words * 8 + a.lanes).reshape(-1)
    cand = cand[a.mask[cand] != 0]
    values = a.cur[cand]
    neg = values < 0
    n_cross = 0
    if with_crossings:
        prev = a.prev[cand]
        crossed = neg != (prev < 0)
        n_cross = int(crossed.sum())
        if n_cross:
            a.crossings[cand] += crossed
            a.band_skips[cand] += crossed & (abs(prev) > a.eps) & (abs(values) > a.eps)
    is_event = a.neg_bound[cand] + a.direction[cand] * abs(values) < 0  # the dense event test
    idx = cand[is_event]
    if len(idx):
        key = a.code[idx] * 2 + neg[is_event]
        a.code[idx] = a.tables["next"][key]
        a.k[idx] += a.tables["k_inc"][key]
        tau1 = a.tau1[idx]
        a.tau1[idx] = a.xp.where(a.tables["tau"][key] & (tau1 < 0), t, tau1)
        a.direction[idx] = a.tables["dir"][key]
        a.neg_bound[idx] = a.tables["nb"][key]
    return n_cross
