"""Online sign tracker: effective flip counts K_T^eff(ρ), first boundary hits and flip rates.

Definitions (paper Section 3.1, Definitions 3.1/3.2; Theorem 3.6; Section 2.1; Appendix C.4.2):

* ``sign(x) = +1 if x >= 0 else −1`` (so sign(0) = sign(−0.0) = +1, C.5's tie-break).
* Observation times: t = 0 is the weights at construction, then t = 1, 2, … one per
  :meth:`SignTracker.observe` call (made after each optimizer step); ``steps`` is T.
* Stopping times per scalar (Definition 3.2), ρ > ε > 0:
  σ0 = inf{t ≥ 0 : |w_t| ≥ ρ}, τ_k = inf{t > σ_{k−1} : |w_t| ≤ ε}, σ_k = inf{t > τ_k : |w_t| ≥ ρ}.
* K_T^eff(ρ) = Σ_{k≥1} 1[σ_k ≤ T, sign(w_{σ_k}) ≠ sign(w_{σ_{k−1}})] (Theorem 3.6).
* ĥ_direct = fraction of scalars with τ1 ≤ T; (ĥ, ĝ) is the zero-inflated geometric MLE of K
  (C.4.2, :mod:`signlock.trainables.lockin_stats`).
* flip vs init (Section 2.1 / C.3.6): fraction with sign(w(t)) ≠ sign(w(0)).
* flip_mean (C.4.2) = (1/T) Σ_{t<T} (1/N) Σ_i 1{sign(w_i(t+1)) ≠ sign(w_i(t))}
  = total zero crossings / (N·T).
* A zero crossing t → t+1 is *band-skipping* when |w_t| > ε and |w_{t+1}| > ε: it jumped over
  Bd(ε) in one step, which Assumption 3.3 rules out.

Implementation: tracked tensors are grouped by (device, dtype). Each group keeps all per-scalar
state in flat buffers and gathers the current weights with one ``torch.cat(..., out=...)``,
upcast to float32 (float64 params stay float64); the thresholds are rounded inward to that
dtype so the comparisons are exact for the stored values. Per scalar the state machine has
phase 0 (before σ0), 1 (outside the band after σ_{k−1}, waiting for τ_k) and 2 (after τ_k,
waiting for σ_k); at most one transition per scalar and step is possible, so one event test
per step, |w|·direction ≤ bound, finds every transition. A few dense passes flag a superset
of the events and zero crossings; the exact logic then runs only on that (usually tiny) set.

``flips.parquet`` schema (rows of :meth:`SignTracker.k_histogram`, sorted by tensor then k):

=======  =======  ==============================================================
column   dtype    meaning
=======  =======  ==============================================================
tensor   string   tracked tensor name, or ``"__pooled__"`` for the sum over tensors
k        int64    a value of K_T^eff(ρ) taken by at least one tracked scalar
count    int64    number of tracked scalars of that tensor with K_T^eff(ρ) = k
=======  =======  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from signlock.trainables.errors import ConfigError
from signlock.trainables.lockin_stats import zig_from_moments

__all__ = ["POOLED", "SignTracker", "sample_coordinates"]

POOLED = "__pooled__"
_STATE_VERSION = 1
_PHASE_OUTSIDE = 1  # phases: 0 before σ0, 1 outside Bd(ε) waiting for τ_k, 2 waiting for σ_k
_STAT_COLUMNS = [
    "tensor",
    "n_tracked",
    "flip_vs_init",
    "flip_mean",
    "zero_crossings",
    "band_skipping_crossings",
    "band_skipping_fraction",
    "h_direct",
    "h_hat",
    "g_hat",
    "k_mean",
]
_SPARSE_BACKEND: str | None = None  # None: numpy on CPU, torch elsewhere (tests force "torch")
# state_dict key -> per-scalar _Group attribute (code = phase + 3·[outer sign negative])
_STATE_FIELDS = {
    "last_value": "cur",
    "init_negative": "init_neg",
    "code": "code",
    "k": "k",
    "tau1": "tau1",
    "crossings": "crossings",
    "band_skips": "band_skips",
}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class _Thresholds:
    """Band/outer tests in the compute dtype, exact for every value representable in it.

    ``eps``/``rho`` are ε, ρ rounded inward (|w| ≤ ε ⇔ |w| ≤ eps, |w| ≥ ρ ⇔ |w| ≥ rho). The dense
    event test is ``neg_bound + direction·|w| < 0`` (a sign bit): phase 1 uses direction +1 and
    neg_bound = −next_up(eps); phases 0/2 use direction −1 and neg_bound = next_down(rho).
    """

    eps: float
    rho: float
    nb_outside: float
    nb_inner: float

    @staticmethod
    def build(rho: float, eps: float, dtype: torch.dtype) -> _Thresholds:
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        inf = np_dtype(np.inf)
        rho_c, eps_c = np_dtype(rho), np_dtype(eps)
        if float(rho_c) < rho:
            rho_c = np.nextafter(rho_c, inf)
        if float(eps_c) > eps:
            eps_c = np.nextafter(eps_c, np_dtype(0))
        nb_outside = -np.nextafter(eps_c, inf)
        nb_inner = np.nextafter(rho_c, np_dtype(0))
        return _Thresholds(float(eps_c), float(rho_c), float(nb_outside), float(nb_inner))


def _transition_tables(th: _Thresholds) -> dict[str, list[Any]]:
    """The Definition 3.2 state machine as lookup tables indexed by key = 2·code + [w < 0].

    ``code`` = phase + 3·[sign(w_{σ_{k−1}}) < 0]. Entries: next code, K increment (Theorem 3.6:
    the outer sign at σ_k differs from the one at σ_{k−1}), whether it is a τ hit, and the next
    direction/neg_bound of the dense event test.
    """
    tables: dict[str, list[Any]] = {"next": [], "k_inc": [], "tau": [], "dir": [], "nb": []}
    for code in range(6):
        phase, outer_neg = code % 3, code // 3
        for neg in (0, 1):
            if phase == _PHASE_OUTSIDE:  # τ_k: enter the band, keep the outer sign
                nxt, k_inc = 2 + 3 * outer_neg, 0
            else:  # σ0 (phase 0) or σ_k (phase 2): back outside with the current sign
                nxt, k_inc = 1 + 3 * neg, int(phase == 2 and neg != outer_neg)
            outside = nxt % 3 == _PHASE_OUTSIDE
            tables["next"].append(nxt)
            tables["k_inc"].append(k_inc)
            tables["tau"].append(phase == _PHASE_OUTSIDE)
            tables["dir"].append(1.0 if outside else -1.0)
            tables["nb"].append(th.nb_outside if outside else th.nb_inner)
    return tables


def sample_coordinates(numel: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted int64 indices of ``min(m, numel)`` coordinates drawn uniformly without replacement.

    Small populations use ``randperm``; large ones keep the first distinct values of an i.i.d.
    uniform stream (also a uniform subset) so C.5-scale tensors need no numel-sized permutation.
    """
    m = min(m, numel)
    if 4 * m > numel:
        chosen = torch.randperm(numel, generator=generator)[:m]
        return chosen.sort().values
    picked = np.empty(0, dtype=np.int64)
    while picked.size < m:
        draw = torch.randint(numel, (2 * m,), generator=generator, dtype=torch.int64).numpy()
        stream = np.concatenate([picked, draw])
        _, first = np.unique(stream, return_index=True)
        picked = stream[np.sort(first)][:m]
    return torch.from_numpy(np.sort(picked))


@dataclass
class _Segment:
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


class _Group:
    """Flat per-scalar state for the tracked tensors sharing one device and dtype.

    Dense passes run in torch. The sparse bookkeeping on the few candidate scalars runs on
    numpy views of the same memory for CPU groups (far lower per-call overhead) and in torch
    otherwise; :func:`_process_candidates` is written once for both.
    """

    def __init__(
        self, segments: list[_Segment], rho: float, eps: float, sparse_backend: str | None = None
    ) -> None:
        self.segments = segments
        self.device = segments[0].tensor.device
        self.dtype = _compute_dtype(segments[0].tensor.dtype)
        self.bits_dtype, self.sign_shift = (
            (torch.int64, 63) if self.dtype == torch.float64 else (torch.int32, 31)
        )
        self.th = _Thresholds.build(rho, eps, self.dtype)
        self.n = n = sum(s.size for s in segments)
        dev = self.device
        floats = {"dtype": self.dtype, "device": dev}
        # Signed values of the latest two observations (−0.0 normalised to +0.0), swapped per step.
        self.cur = torch.zeros(n, **floats)
        self.prev = torch.zeros(n, **floats)
        self.work = torch.empty(n, **floats)
        self.bits = torch.empty(n, dtype=self.bits_dtype, device=dev)
        self.mask = torch.zeros(-(-n // 8) * 8, dtype=torch.int8, device=dev)
        self.mask_head = self.mask[:n]
        self.mask_words = self.mask.view(torch.int64)
        self.direction = torch.empty(n, **floats)
        self.neg_bound = torch.empty(n, **floats)
        self.init_neg = torch.zeros(n, dtype=torch.bool, device=dev)
        self.code = torch.zeros(n, dtype=torch.int32, device=dev)
        self.k = torch.zeros(n, dtype=torch.int32, device=dev)
        self.tau1 = torch.full((n,), -1, dtype=torch.int32, device=dev)
        self.crossings = torch.zeros(n, dtype=torch.int32, device=dev)
        self.band_skips = torch.zeros(n, dtype=torch.int32, device=dev)
        backend = sparse_backend or ("numpy" if dev.type == "cpu" else "torch")
        self.sparse = _SparseArrays.of(self, backend)
        self.reset_event_test()

    def reset_event_test(self) -> None:
        """direction/neg_bound from the phase: phase 1 waits for |w| ≤ ε, 0/2 for |w| ≥ ρ."""
        outside = (self.code % 3 == _PHASE_OUTSIDE).long()
        choices = torch.tensor(
            [[-1.0, self.th.nb_inner], [1.0, self.th.nb_outside]],
            dtype=self.dtype,
            device=self.device,
        )
        self.direction.copy_(choices[outside, 0])
        self.neg_bound.copy_(choices[outside, 1])

    def record_initial(self) -> None:
        self._load()
        self.init_neg.copy_(self.cur < 0)
        self._observe_candidates(0, with_crossings=False)

    def observe(self, t: int) -> int:
        """Record observation t ≥ 1; returns the number of zero crossings t−1 → t."""
        self.cur, self.prev = self.prev, self.cur
        self.sparse.cur, self.sparse.prev = self.sparse.prev, self.sparse.cur
        self._load()
        return self._observe_candidates(t, with_crossings=True)

    def _load(self) -> None:
        torch.cat([s.flat_values() for s in self.segments], out=self.cur)
        self.cur.add_(0.0)  # −0.0 + 0.0 = +0.0: afterwards the sign bit is exactly [w < 0]

    def _observe_candidates(self, t: int, *, with_crossings: bool) -> int:
        """Flag a superset of this step's events and zero crossings, then process them exactly.

        Per scalar, the sign bit of ``neg_bound + direction·|w|`` is its event test and the sign
        bit of cur XOR prev its crossing test. Their OR goes into one int8 per scalar, scanned
        eight scalars at a time through an int64 view.
        """
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
        words = torch.nonzero(self.mask_words)
        if words.numel() == 0:
            return 0
        return _process_candidates(self.sparse, self.sparse.wrap(words), t, with_crossings)

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


@dataclass
class _SparseArrays:
    """The per-scalar arrays the sparse step touches: numpy views (CPU) or the torch tensors."""

    xp: Any
    cur: Any
    prev: Any
    work: Any
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
    def of(group: _Group, backend: str) -> _SparseArrays:
        if backend not in ("numpy", "torch") or (backend == "numpy" and group.device.type != "cpu"):
            raise ValueError(f"sparse backend {backend!r} is not available on {group.device}")
        raw = _transition_tables(group.th)
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
        names = [
            "cur",
            "prev",
            "work",
            "mask",
            "code",
            "k",
            "tau1",
            "crossings",
            "band_skips",
            "direction",
            "neg_bound",
        ]
        arrays = {name: getattr(group, name) for name in names}
        if backend == "torch":
            return _SparseArrays(torch, **arrays, lanes=lanes, tables=tables, eps=group.th.eps)
        return _SparseArrays(
            np,
            **{name: value.numpy() for name, value in arrays.items()},
            lanes=lanes.numpy(),
            tables={key: value.numpy() for key, value in tables.items()},
            eps=group.th.eps,
        )

    def wrap(self, tensor: torch.Tensor) -> Any:
        return tensor.numpy() if self.xp is np else tensor


def _process_candidates(a: _SparseArrays, words: Any, t: int, with_crossings: bool) -> int:
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
    is_event = a.work[cand] < 0
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


def _validate_config(rho: float, eps: float, sample_per_tensor: int | None) -> None:
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise ConfigError("tracker.eps", eps, "a finite number > 0")
    if not (isinstance(rho, int | float) and math.isfinite(rho) and rho > eps):
        raise ConfigError("tracker.rho", rho, f"a finite number > tracker.eps={eps} (ε < ρ)")
    if sample_per_tensor is not None and (
        isinstance(sample_per_tensor, bool)
        or not isinstance(sample_per_tensor, int)
        or sample_per_tensor < 1
    ):
        raise ConfigError("tracker.sample_per_tensor", sample_per_tensor, "an integer >= 1 or None")


def _validate_params(named: list[tuple[str, torch.Tensor]]) -> None:
    if not named:
        raise ConfigError("tracker.named_params", named, "a non-empty list of (name, tensor)")
    seen: set[str] = set()
    for name, tensor in named:
        if name in seen:
            raise ConfigError("tracker.named_params", name, "unique tensor names")
        seen.add(name)
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ConfigError("tracker.named_params", name, "floating-point torch tensors only")
        if tensor.numel() == 0:
            raise ConfigError("tracker.named_params", name, "tensors with at least one element")


class SignTracker:
    """Online tracker of sign lock-in statistics over a fixed list of named tensors.

    Call :meth:`observe` after every optimizer step; the tensors must be updated in place (as
    every ``torch.optim`` optimizer does). Read the statistics at log time with
    :meth:`window_stats`, :meth:`per_tensor_stats`, :meth:`k_histogram` or :meth:`summary`.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, torch.Tensor]],
        *,
        rho: float = 1e-3,
        eps: float = 1e-4,
        sample_per_tensor: int | None = None,
        sample_seed: int = 0,
    ) -> None:
        named = list(named_params)
        _validate_config(rho, eps, sample_per_tensor)
        _validate_params(named)
        self.rho = float(rho)
        self.eps = float(eps)
        self.sample_per_tensor = sample_per_tensor
        self.sample_seed = sample_seed
        self.tensor_names: list[str] = [name for name, _ in named]
        self.steps = 0
        self._window_steps = 0
        self._window_crossings = 0
        self._segments, self._groups = self._build(named)
        self.n_tracked: int = sum(s.size for s in self._segments)
        with torch.no_grad():
            for group in self._groups:
                group.record_initial()

    def _build(self, named: list[tuple[str, torch.Tensor]]) -> tuple[list[_Segment], list[_Group]]:
        generator = torch.Generator(device="cpu").manual_seed(self.sample_seed)
        group_of: dict[tuple[torch.device, torch.dtype], int] = {}
        members_of: list[list[_Segment]] = []
        segments = []
        for name, tensor in named:
            index = None
            if self.sample_per_tensor is not None:
                index = sample_coordinates(tensor.numel(), self.sample_per_tensor, generator)
                index = index.to(tensor.device)
            g = group_of.setdefault((tensor.device, tensor.dtype), len(members_of))
            if g == len(members_of):
                members_of.append([])
            members = members_of[g]
            start = members[-1].stop if members else 0
            size = tensor.numel() if index is None else index.numel()
            segment = _Segment(name, tensor, g, len(members), start, size, index)
            members.append(segment)
            segments.append(segment)
        groups = [_Group(members, self.rho, self.eps, _SPARSE_BACKEND) for members in members_of]
        return segments, groups

    @torch.no_grad()
    def observe(self) -> None:
        """Record the next observation t = steps + 1 (call after each optimizer step)."""
        self.steps += 1
        crossings = 0
        for group in self._groups:
            crossings += group.observe(self.steps)
        self._window_steps += 1
        self._window_crossings += crossings

    # ----- statistics (log time) -----

    def _per_tensor_counts(self) -> list[dict[str, int]]:
        """Integer counts per tracked tensor, in ``tensor_names`` order."""
        per_group = [group.segment_counts() for group in self._groups]
        keys = ["flips_init", "tau_hits", "k_positive", "k_sum", "crossings", "band_skips"]
        out = []
        for s in self._segments:
            counts = dict(zip(keys, per_group[s.group][s.local], strict=True))
            out.append({"n": s.size, **counts})
        return out

    def _stats_row(self, name: str, c: dict[str, int]) -> dict[str, Any]:
        n, steps = c["n"], self.steps
        h_hat, g_hat = zig_from_moments(n, c["k_positive"], c["k_sum"])
        crossings = c["crossings"]
        return {
            "tensor": name,
            "n_tracked": n,
            "flip_vs_init": c["flips_init"] / n,
            "flip_mean": crossings / (n * steps) if steps else 0.0,
            "zero_crossings": crossings,
            "band_skipping_crossings": c["band_skips"],
            "band_skipping_fraction": c["band_skips"] / crossings if crossings else math.nan,
            "h_direct": c["tau_hits"] / n,
            "h_hat": h_hat,
            "g_hat": g_hat,
            "k_mean": c["k_sum"] / n,
        }

    def per_tensor_stats(self) -> pd.DataFrame:
        """One row per tracked tensor plus a ``__pooled__`` row (pooled over all scalars)."""
        counts = self._per_tensor_counts()
        pooled = {key: sum(c[key] for c in counts) for key in counts[0]}
        rows = [self._stats_row(name, c) for name, c in zip(self.tensor_names, counts, strict=True)]
        rows.append(self._stats_row(POOLED, pooled))
        frame = pd.DataFrame(rows, columns=_STAT_COLUMNS)
        int_columns = ["n_tracked", "zero_crossings", "band_skipping_crossings"]
        return frame.astype(dict.fromkeys(int_columns, "int64"))

    def summary(self) -> dict[str, float]:
        """Pooled statistics as plain floats (for metric loggers)."""
        pooled = self.per_tensor_stats().iloc[-1]
        keys = [
            "flip_vs_init",
            "flip_mean",
            "h_hat",
            "g_hat",
            "h_direct",
            "k_mean",
            "zero_crossings",
            "band_skipping_fraction",
            "n_tracked",
        ]
        out = {key: float(pooled[key]) for key in keys}
        out["steps"] = float(self.steps)
        return out

    def window_stats(self) -> dict[str, float]:
        """Pooled stats; ``step_flip_rate`` covers the steps since the previous call (resets)."""
        flips = hits = 0
        for group in self._groups:
            flips += int(((group.cur < 0) != group.init_neg).sum())
            hits += int((group.tau1 >= 0).sum())
        n_steps, crossings = self._window_steps, self._window_crossings
        self._window_steps = self._window_crossings = 0
        return {
            "flip_vs_init": flips / self.n_tracked,
            "step_flip_rate": crossings / (self.n_tracked * n_steps) if n_steps else 0.0,
            "boundary_hit_fraction": hits / self.n_tracked,
        }

    def k_histogram(self) -> pd.DataFrame:
        """Histogram of K per tensor and pooled: columns tensor, k, count (``flips.parquet``)."""
        names: list[str] = []
        ks: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        pooled = np.zeros(1, dtype=np.int64)
        for s in self._segments:
            group = self._groups[s.group]
            hist = torch.bincount(group.k[s.start : s.stop].long()).cpu().numpy()
            if hist.size > pooled.size:
                pooled = np.pad(pooled, (0, hist.size - pooled.size))
            pooled[: hist.size] += hist
            self._append_hist(names, ks, counts, s.name, hist)
        self._append_hist(names, ks, counts, POOLED, pooled)
        frame = pd.DataFrame(
            {
                "tensor": pd.Series(names, dtype=object),
                "k": np.concatenate(ks).astype(np.int64),
                "count": np.concatenate(counts).astype(np.int64),
            }
        )
        return frame.sort_values(["tensor", "k"], kind="stable").reset_index(drop=True)

    @staticmethod
    def _append_hist(
        names: list[str],
        ks: list[np.ndarray],
        counts: list[np.ndarray],
        name: str,
        hist: np.ndarray,
    ) -> None:
        nonzero = np.flatnonzero(hist)
        names.extend([name] * nonzero.size)
        ks.append(nonzero)
        counts.append(hist[nonzero])

    def _flat(self, attr: str) -> torch.Tensor:
        """Per-scalar state ``attr`` concatenated over tensors in ``tensor_names`` order (CPU)."""
        parts = [
            getattr(self._groups[s.group], attr)[s.start : s.stop].cpu() for s in self._segments
        ]
        return torch.cat(parts)

    def k_values(self) -> torch.Tensor:
        """K_T^eff(ρ) of every tracked scalar (int32, CPU, tensors in ``tensor_names`` order)."""
        return self._flat("k")

    def first_hit_times(self) -> torch.Tensor:
        """τ1 of every tracked scalar, −1 where τ1 > T so far (int32, CPU)."""
        return self._flat("tau1")

    def tracked_indices(self) -> list[torch.Tensor]:
        """Per tensor, the flat coordinates tracked (all of them unless sampling; CPU int64)."""
        return [torch.arange(s.size) if s.index is None else s.index.cpu() for s in self._segments]

    # ----- checkpointing -----

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: CPU tensors, ints and the list of tensor names (loadable
        with ``torch.load(weights_only=True)``)."""
        with torch.no_grad():
            state: dict[str, Any] = {
                "version": _STATE_VERSION,
                "names": list(self.tensor_names),
                "sizes": torch.tensor([s.size for s in self._segments], dtype=torch.int64),
                "numels": torch.tensor([s.tensor.numel() for s in self._segments]),
                "rho": torch.tensor(self.rho, dtype=torch.float64),
                "eps": torch.tensor(self.eps, dtype=torch.float64),
                "steps": self.steps,
                "window_steps": self._window_steps,
                "window_crossings": self._window_crossings,
                "sampled": int(self.sample_per_tensor is not None),
                "indices": torch.cat(self.tracked_indices()).to(torch.int64),
            }
            for key, attr in _STATE_FIELDS.items():
                state[key] = self._flat(attr)
            state["last_value"] = state["last_value"].to(torch.float64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a tracker built over the same named tensors."""
        self._check_compatible(state)
        sizes = [s.size for s in self._segments]
        with torch.no_grad():
            indices = torch.split(state["indices"], sizes)
            for s, index in zip(self._segments, indices, strict=True):
                if s.index is not None:
                    s.index = index.to(device=s.index.device, dtype=torch.int64)
            for key, attr in _STATE_FIELDS.items():
                self._scatter(attr, torch.split(state[key], sizes))
            for group in self._groups:
                group.reset_event_test()
        self.steps = int(state["steps"])
        self._window_steps = int(state["window_steps"])
        self._window_crossings = int(state["window_crossings"])

    def _scatter(self, attr: str, parts: tuple[torch.Tensor, ...]) -> None:
        for s, part in zip(self._segments, parts, strict=True):
            target = getattr(self._groups[s.group], attr)
            target[s.start : s.stop] = part.to(device=target.device, dtype=target.dtype)

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported SignTracker state version {state.get('version')!r}")
        if list(state["names"]) != self.tensor_names:
            raise ValueError(
                f"SignTracker state tracks tensors {list(state['names'])}, "
                f"this tracker tracks {self.tensor_names}"
            )
        sizes = [s.size for s in self._segments]
        numels = [s.tensor.numel() for s in self._segments]
        if state["sizes"].tolist() != sizes or state["numels"].tolist() != numels:
            raise ValueError(
                f"SignTracker state sizes {state['sizes'].tolist()} / numels "
                f"{state['numels'].tolist()} differ from this tracker's {sizes} / {numels}"
            )
        if bool(state["sampled"]) != (self.sample_per_tensor is not None):
            raise ValueError("SignTracker state and this tracker differ in sampling mode")
        for key in _STATE_FIELDS:
            if key not in state or state[key].numel() != self.n_tracked:
                raise ValueError(f"SignTracker state lacks {key!r} for {self.n_tracked} scalars")
        if (float(state["rho"]), float(state["eps"])) != (self.rho, self.eps):
            raise ValueError(
                f"SignTracker state has rho={float(state['rho'])}, eps={float(state['eps'])}; "
                f"this tracker has rho={self.rho}, eps={self.eps}"
            )
