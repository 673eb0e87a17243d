"""Lock-in statistics: the zero-inflated geometric (ZIG) model of K_T^eff(ρ) and small helpers.

Model (Appendix C.4.2): P[K=0] = 1−h, P[K=k] = h(1−g)g^(k−1) for k ≥ 1. Its maximum-likelihood
estimates are ĥ = P̂[K>0] and ĝ = 1 − 1/Ê[K | K>0], with ĝ = 0 when Ê[K | K>0] ≤ 1 (and
ĥ = ĝ = 0 when no K is positive). The tail P[K ≥ k] = h g^(k−1) is the form of Theorem 3.6.

Everything here is pure numpy; torch tensors are accepted as inputs and converted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "empirical_tail",
    "fit_zero_inflated_geometric",
    "fit_zig_from_histogram",
    "zig_from_moments",
    "zig_log_likelihood",
    "zig_tail",
]


def _as_int_array(values: Any, what: str) -> npt.NDArray[np.int64]:
    """1-D int64 copy of ``values`` (array, tensor or sequence of non-negative integers)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise ValueError(f"{what} must hold integers, got non-integral values")
    out = arr.astype(np.int64)
    if np.any(out < 0):
        raise ValueError(f"{what} must be >= 0")
    return out


def zig_from_moments(n: int, n_positive: int, k_sum: int) -> tuple[float, float]:
    """ZIG MLE (C.4.2) from sufficient statistics: sample size, #{K>0} and ΣK."""
    if n <= 0:
        raise ValueError("the ZIG fit needs a non-empty sample")
    if not 0 <= n_positive <= n or k_sum < n_positive:
        raise ValueError(f"inconsistent moments n={n}, n_positive={n_positive}, k_sum={k_sum}")
    if n_positive == 0:
        return 0.0, 0.0
    h_hat = n_positive / n
    mean_positive = k_sum / n_positive
    g_hat = 1.0 - 1.0 / mean_positive if mean_positive > 1.0 else 0.0
    return h_hat, g_hat


def fit_zero_inflated_geometric(k_values: Any) -> tuple[float, float]:
    """(ĥ, ĝ) of the zero-inflated geometric model (C.4.2) from a 1-D sample of K values."""
    k = _as_int_array(k_values, "k_values")
    return zig_from_moments(int(k.size), int(np.count_nonzero(k)), int(k.sum()))


def fit_zig_from_histogram(k: Any, count: Any) -> tuple[float, float]:
    """(ĥ, ĝ) of the zero-inflated geometric model (C.4.2) from a histogram (k, count)."""
    ks = _as_int_array(k, "k")
    counts = _as_int_array(count, "count")
    if ks.shape != counts.shape:
        raise ValueError(f"k and count differ in length: {ks.size} != {counts.size}")
    positive = ks > 0
    return zig_from_moments(
        int(counts.sum()), int(counts[positive].sum()), int((ks * counts).sum())
    )


def zig_tail(h: float, g: float, k: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """P[K ≥ k] under the ZIG model: h g^(k−1) for k ≥ 1 and 1 for k ≤ 0 (Theorem 3.6 form)."""
    ks = np.asarray(k, dtype=np.int64)
    powers = np.power(float(g), np.maximum(ks - 1, 0).astype(np.float64))
    return np.where(ks >= 1, float(h) * powers, 1.0)


def zig_log_likelihood(h: float, g: float, k_values: Any) -> float:
    """Log-likelihood of a K sample under ZIG(h, g); −inf where a sample has zero probability."""
    k = _as_int_array(k_values, "k_values")
    n_zero = int(np.count_nonzero(k == 0))
    positive = k[k > 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        total = n_zero * np.log1p(-h) if n_zero else 0.0
        if positive.size:
            total += positive.size * (np.log(h) + np.log1p(-g))
            excess = int((positive - 1).sum())
            total += excess * np.log(g) if excess else 0.0
    return float(total)


def empirical_tail(k_values: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(k, P̂[K ≥ k]) for k = 0 … max K, the empirical counterpart of :func:`zig_tail`."""
    k = _as_int_array(k_values, "k_values")
    if k.size == 0:
        raise ValueError("the empirical tail needs a non-empty sample")
    counts = np.bincount(k)
    tail = np.cumsum(counts[::-1])[::-1] / k.size
    return np.arange(counts.size, dtype=np.int64), tail.astype(np.float64)
