"""What every sign-tracker layout shares: validation, coordinate sampling and the statistics
built from per-tensor integer counts (definitions in :mod:`signlock.trainables.tracker`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from signlock.trainables.errors import ConfigError
from signlock.trainables.lockin_stats import zig_from_moments
from signlock.trainables.schema import SUMMARY_INT_FIELDS, TRACKER_SUMMARY_FIELDS

POOLED = "__pooled__"
STAT_COLUMNS = [
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


def validate_config(rho: float, eps: float, sample_per_tensor: int | None) -> None:
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


def validate_params(named: list[tuple[str, torch.Tensor]]) -> None:
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


class TrackerStatistics:
    """Statistics from ``_per_tensor_counts()``: per tracked tensor ``n``, ``flips_init``,
    ``tau_hits``, ``k_positive``, ``k_sum``, ``crossings``, ``band_skips`` (ints)."""

    tensor_names: list[str]
    rho: float
    eps: float
    sample_per_tensor: int | None
    sample_seed: int
    steps: int
    n_tracked: int
    _window_steps: int
    _window_crossings: int
    _tensor_window_start: int
    _tensor_window_crossings: list[int]

    def _start(
        self,
        named: list[tuple[str, torch.Tensor]],
        rho: float,
        eps: float,
        sample_per_tensor: int | None,
        sample_seed: int,
    ) -> None:
        """Validate the configuration and start the counters at observation 0."""
        validate_config(rho, eps, sample_per_tensor)
        validate_params(named)
        self.rho, self.eps = float(rho), float(eps)
        self.sample_per_tensor = sample_per_tensor
        self.sample_seed = sample_seed
        self.tensor_names = [name for name, _ in named]
        self.steps = 0
        self._window_steps = 0
        self._window_crossings = 0
        self._tensor_window_start = 0  # step of the previous tensor_window_stats() call
        self._tensor_window_crossings = []  # per tensor, at that call (empty: 0)

    def _per_tensor_counts(self) -> list[dict[str, int]]:
        raise NotImplementedError  # each layout counts its own way

    def _sizes_and_numels(self) -> tuple[list[int], list[int]]:
        """Per tracked tensor: how many scalars are tracked, and how many it has."""
        raise NotImplementedError

    def _k_per_tensor(self) -> list[tuple[str, torch.Tensor]]:
        """(name, K of each tracked scalar as int64 on the CPU) per tracked tensor."""
        raise NotImplementedError

    def k_histogram(self) -> pd.DataFrame:
        """Histogram of K per tensor and pooled: columns tensor, k, count (``flips.parquet``)."""
        names: list[str] = []
        ks: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        pooled = np.zeros(1, dtype=np.int64)
        for name, k in self._k_per_tensor():
            hist = torch.bincount(k).numpy()
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

    # ----- the checkpoint fields every layout shares -----

    def _state_header(self, version: int) -> dict[str, Any]:
        """What is tracked, with which thresholds, and the step counters."""
        sizes, numels = self._sizes_and_numels()
        return {
            "version": version,
            "names": list(self.tensor_names),
            "sizes": torch.tensor(sizes, dtype=torch.int64),
            "numels": torch.tensor(numels, dtype=torch.int64),
            "rho": torch.tensor(self.rho, dtype=torch.float64),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
            "steps": self.steps,
            "window_steps": self._window_steps,
            "window_crossings": self._window_crossings,
            "sampled": int(self.sample_per_tensor is not None),
        }

    def _check_same_tracker(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of other tensors, sizes, sampling mode or thresholds."""
        if list(state["names"]) != self.tensor_names:
            raise ValueError(
                f"SignTracker state tracks tensors {list(state['names'])}, "
                f"this tracker tracks {self.tensor_names}"
            )
        sizes, numels = self._sizes_and_numels()
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

    def _restore_counters(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self._window_steps = int(state["window_steps"])
        self._window_crossings = int(state["window_crossings"])
        # Checkpoints are taken right after a logged row: the per-tensor window starts here.
        self._tensor_window_crossings = [c["crossings"] for c in self._per_tensor_counts()]
        self._tensor_window_start = self.steps

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
        frame = pd.DataFrame(rows, columns=STAT_COLUMNS)
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
