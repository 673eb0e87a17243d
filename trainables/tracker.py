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

Implementation: the per-scalar state machine and the dense/sparse passes that drive it live in
:mod:`signlock.trainables._sign_kernel`; this module holds the public API, the statistics and
the checkpoint format.

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
from typing import Any

import numpy as np
import pandas as pd
import torch

from signlock.trainables._sign_kernel import (
    CANDIDATE_CHUNK_WORDS,
    SPARSE_BACKENDS,
    Group,
    Segment,
    SparseBackend,
    resident_bytes_per_scalar,
)
from signlock.trainables.errors import ConfigError
from signlock.trainables.lockin_stats import zig_from_moments
from signlock.trainables.schema import SUMMARY_INT_FIELDS, TRACKER_SUMMARY_FIELDS

# The memory planner's view of the kernel's layout: per-scalar resident bytes of a tracked
# tensor and how many flagged mask words one sparse step processes at once.
__all__ = [
    "CANDIDATE_CHUNK_WORDS",
    "POOLED",
    "SignTracker",
    "resident_bytes_per_scalar",
    "sample_coordinates",
]

POOLED = "__pooled__"
_STATE_VERSION = 1
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
# state_dict key -> per-scalar Group attribute (code: _sign_kernel.encode(phase, outer sign < 0))
_STATE_FIELDS = {
    "last_value": "cur",
    "init_negative": "init_neg",
    "code": "code",
    "k": "k",
    "tau1": "tau1",
    "crossings": "crossings",
    "band_skips": "band_skips",
}


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


def _validate_backend(backend: object, named: list[tuple[str, torch.Tensor]]) -> None:
    if backend not in SPARSE_BACKENDS:
        allowed = ", ".join(map(repr, SPARSE_BACKENDS))
        raise ConfigError("tracker.backend", backend, f"one of {allowed}")
    off_cpu = sorted({str(tensor.device) for _, tensor in named if tensor.device.type != "cpu"})
    if backend == "numpy" and off_cpu:
        where = ", ".join(off_cpu)
        raise ConfigError("tracker.backend", backend, f"'auto' or 'torch' (tensors on {where})")


class SignTracker:
    """Online tracker of sign lock-in statistics over a fixed list of named tensors.

    Call :meth:`observe` after every optimizer step; the tensors must be updated in place (as
    every ``torch.optim`` optimizer does). Read the statistics at log time with
    :meth:`window_stats`, :meth:`per_tensor_stats`, :meth:`k_histogram` or :meth:`summary`.

    ``backend`` runs the per-step bookkeeping of the few flagged scalars on numpy views
    (CPU tensors only) or in torch; ``"auto"`` picks numpy on CPU and torch elsewhere. Results
    are identical either way; it is not part of the checkpoint.

    ``fused`` runs the dense per-step passes as one compiled kernel (``torch.compile``) instead
    of eager torch ops; ``None`` fuses the groups on CUDA, where the eager passes are bound by
    memory traffic. Results are identical either way; it is not part of the checkpoint.
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, torch.Tensor]],
        *,
        rho: float = 1e-3,
        eps: float = 1e-4,
        sample_per_tensor: int | None = None,
        sample_seed: int = 0,
        backend: SparseBackend = "auto",
        fused: bool | None = None,
    ) -> None:
        named = list(named_params)
        _validate_config(rho, eps, sample_per_tensor)
        _validate_params(named)
        _validate_backend(backend, named)
        if fused not in (None, True, False):
            raise ConfigError("tracker.fused", fused, "true, false or null (fused on CUDA)")
        self.fused = fused
        self.rho = float(rho)
        self.eps = float(eps)
        self.sample_per_tensor = sample_per_tensor
        self.sample_seed = sample_seed
        self.backend = backend
        self.tensor_names: list[str] = [name for name, _ in named]
        self.steps = 0
        self._window_steps = 0
        self._window_crossings = 0
        self._tensor_window_start = 0  # step of the previous tensor_window_stats() call
        self._tensor_window_crossings: list[int] = []  # per tensor, at that call (empty: 0)
        self._segments, self._groups = self._build(named)
        self.n_tracked: int = sum(s.size for s in self._segments)
        with torch.no_grad():
            for group in self._groups:
                group.record_initial()

    def _build(self, named: list[tuple[str, torch.Tensor]]) -> tuple[list[Segment], list[Group]]:
        generator = torch.Generator(device="cpu").manual_seed(self.sample_seed)
        group_of: dict[tuple[torch.device, torch.dtype], int] = {}
        members_of: list[list[Segment]] = []
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
            segment = Segment(name, tensor, g, len(members), start, size, index)
            members.append(segment)
            segments.append(segment)
        groups = [
            Group(members, self.rho, self.eps, self.backend, self._fuses(members[0].tensor))
            for members in members_of
        ]
        return segments, groups

    def _fuses(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cuda" if self.fused is None else self.fused

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

    def summary(self) -> dict[str, Any]:
        """Pooled statistics under the names of ``schema.TRACKER_SUMMARY_FIELDS`` plus ``steps``
        (counts as ints, the rest as floats)."""
        pooled = self.per_tensor_stats().iloc[-1]
        out: dict[str, Any] = {}
        for key in TRACKER_SUMMARY_FIELDS:
            column = "flip_vs_init" if key == "final_flip_ratio" else key
            out[key] = int(pooled[column]) if key in SUMMARY_INT_FIELDS else float(pooled[column])
        out["steps"] = self.steps
        return out

    def window_stats(self) -> dict[str, float]:
        """Pooled ``schema.TRACKER_WINDOW_METRICS``: ``flip_mean`` is cumulative (all crossings
        so far / (N·t)); ``step_flip_rate`` covers the steps since the previous call (resets)."""
        flips = hits = crossings_so_far = 0
        for group in self._groups:
            flips += int(((group.cur < 0) != group.init_neg).sum())
            hits += int((group.tau1 >= 0).sum())
            crossings_so_far += int(group.crossings.sum(dtype=torch.int64))
        n_steps, crossings = self._window_steps, self._window_crossings
        self._window_steps = self._window_crossings = 0
        n = self.n_tracked
        return {
            "flip_vs_init": flips / n,
            "flip_mean": crossings_so_far / (n * self.steps) if self.steps else 0.0,
            "step_flip_rate": crossings / (n * n_steps) if n_steps else 0.0,
            "boundary_hit_fraction": hits / n,
        }

    def tensor_window_stats(self) -> list[dict[str, Any]]:
        """One row per tracked tensor (``schema.TENSOR_METRIC_COLUMNS`` but the step): its flip
        ratio against initialisation, step flip rate since the previous call (resets), boundary
        hit fraction and cumulative K mean."""
        counts = self._per_tensor_counts()
        baseline = self._tensor_window_crossings or [0] * len(counts)
        steps = self.steps - self._tensor_window_start
        rows = []
        for name, c, before in zip(self.tensor_names, counts, baseline, strict=True):
            n = c["n"]
            rows.append(
                {
                    "tensor": name,
                    "n_tracked": n,
                    "flip_vs_init": c["flips_init"] / n,
                    "step_flip_rate": (c["crossings"] - before) / (n * steps) if steps else 0.0,
                    "boundary_hit_fraction": c["tau_hits"] / n,
                    "k_mean": c["k_sum"] / n,
                }
            )
        self._tensor_window_crossings = [c["crossings"] for c in counts]
        self._tensor_window_start = self.steps
        return rows

    def k_histogram(self) -> pd.DataFrame:
        """Histogram of K per tensor and pooled: columns tensor, k, count (``flips.parquet``)."""
        names: list[str] = []
        ks: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        pooled = np.zeros(1, dtype=np.int64)
        for name, k in zip(self.tensor_names, self._k_per_tensor(), strict=True):
            hist = torch.bincount(k.long()).cpu().numpy()
            if hist.size > pooled.size:
                pooled = np.pad(pooled, (0, hist.size - pooled.size))
            pooled[: hist.size] += hist
            self._append_hist(names, ks, counts, name, hist)
        self._append_hist(names, ks, counts, POOLED, pooled)
        frame = pd.DataFrame(
            {
                "tensor": pd.Series(names, dtype=object),
                "k": np.concatenate(ks).astype(np.int64),
                "count": np.concatenate(counts).astype(np.int64),
            }
        )
        return frame.sort_values(["tensor", "k"], kind="stable").reset_index(drop=True)

    def _k_per_tensor(self) -> list[torch.Tensor]:
        """K of every tracked scalar, one tensor per tracked tensor (on its group's device)."""
        return [self._groups[s.group].k[s.start : s.stop] for s in self._segments]

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
        # Checkpoints are taken right after a logged row: the per-tensor window starts here.
        self._tensor_window_crossings = [c["crossings"] for c in self._per_tensor_counts()]
        self._tensor_window_start = self.steps

    def _scatter(self, attr: str, parts: tuple[torch.Tensor, ...]) -> None:
        for s, part in zip(self._segments, parts, strict=True):
            target = getattr(self._groups[s.group], attr)
            target[s.start : s.stop] = part.to(device=target.device, dtype=target.dtype)

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported SignTracker state version {state.get('version')!r}")
        self._check_same_tracker(state)
        for key in _STATE_FIELDS:
            if key not in state or state[key].numel() != self.n_tracked:
                raise ValueError(f"SignTracker state lacks {key!r} for {self.n_tracked} scalars")

    def _tracked_parts(self) -> list[Any]:
        """One object per tracked tensor with its ``size`` (scalars tracked) and ``tensor``."""
        return self._segments

    def _check_same_tracker(self, state: dict[str, Any]) -> None:
        """The state tracks the same tensors, sizes, sampling mode and thresholds."""
        if list(state["names"]) != self.tensor_names:
            raise ValueError(
                f"SignTracker state tracks tensors {list(state['names'])}, "
                f"this tracker tracks {self.tensor_names}"
            )
        sizes = [part.size for part in self._tracked_parts()]
        numels = [part.tensor.numel() for part in self._tracked_parts()]
        if state["sizes"].tolist() != sizes or state["numels"].tolist() != numels:
            raise ValueError(
                f"SignTracker state sizes {state['sizes'].tolist()} / numels "
                f"{state['numels'].tolist()} differ from this tracker's {sizes} / {numels}"
            )
        if bool(state["sampled"]) != (self.sample_per_tensor is not None):
            raise ValueError("SignTracker state and this tracker differ in sampling mode")
        if (float(state["rho"]), float(state["eps"])) != (self.rho, self.eps):
            raise ValueError(
                f"SignTracker state has rho={float(state['rho'])}, eps={float(state['eps'])}; "
                f"this tracker has rho={self.rho}, eps={self.eps}"
            )
