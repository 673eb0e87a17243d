"""Lock-in statistics of K histograms with uncertainty (Sections 3.3–3.4, C.4.2, D.6, E.2.2).

Every function takes a K histogram — distinct values ``k`` and their ``count`` (a trial's
``flips.parquet``, per tensor or pooled) — so its cost depends on the number of distinct K
values, never on the number of tracked scalars.

- :func:`fit` — the zero-inflated geometric MLE (ĥ, ĝ) of C.4.2: P[K=0] = 1−h,
  P[K=k] = h(1−g)g^(k−1) for k ≥ 1.
- :func:`bootstrap` — a percentile interval for (ĥ, ĝ) by multinomial resampling of the histogram.
- :func:`goodness_of_fit` — Pearson's χ² of the histogram against the fitted law, sparse tail bins
  pooled; not applicable (with the reason) when no degree of freedom is left, e.g. ĝ = 0.
- :func:`floating_test` — geometric lock-in tail or the broad, binomial-shaped histogram of the
  sign-floating regime (Theorem D.33): a likelihood ratio of the geometric law of K−1 | K ≥ 1
  against the negative binomial family that nests it (shape r = 1 is the geometric; r > 1 is
  peaked like a binomial, r < 1 heavier-tailed).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import numpy.typing as npt
from scipy import optimize, special, stats

from signlock.trainables.lockin_stats import fit_zig_from_histogram

MIN_EXPECTED = 5.0  # Pearson's rule: pool tail bins until each expects at least this many
N_FITTED = 2  # h and g


def _histogram(k: npt.ArrayLike, count: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ks = np.asarray(k, dtype=np.int64)
    counts = np.asarray(count, dtype=np.int64)
    if ks.shape != counts.shape or ks.ndim != 1:
        raise ValueError(f"k and count must be 1-D of one length, got {ks.shape}, {counts.shape}")
    if (ks < 0).any() or (counts < 0).any() or counts.sum() == 0:
        raise ValueError("a K histogram needs k >= 0, count >= 0 and at least one scalar")
    order = np.argsort(ks)
    return ks[order], counts[order]


@dataclass(frozen=True)
class ZigFit:
    h: float
    g: float
    n: int  # scalars
    n_positive: int  # scalars with K > 0


def fit(k: npt.ArrayLike, count: npt.ArrayLike) -> ZigFit:
    """ĥ = P̂[K > 0], ĝ = 1 − 1/Ê[K | K > 0] (0 when that mean is ≤ 1) — C.4.2."""
    ks, counts = _histogram(k, count)
    h, g = fit_zig_from_histogram(ks, counts)
    return ZigFit(h, g, int(counts.sum()), int(counts[ks > 0].sum()))


@dataclass(frozen=True)
class Interval:
    h_low: float
    h_high: float
    g_low: float
    g_high: float
    level: float
    resamples: int


def bootstrap(
    k: npt.ArrayLike,
    count: npt.ArrayLike,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of (ĥ, ĝ): each resample draws the n scalars' K values
    from the observed histogram (one multinomial draw over its distinct values)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if isinstance(resamples, bool) or not isinstance(resamples, Integral) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1, got {resamples!r}")
    ks, counts = _histogram(k, count)
    n = int(counts.sum())
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    n_positive = draws[:, ks > 0].sum(axis=1)
    k_sum = draws @ ks
    h = n_positive / n
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_positive = np.where(n_positive > 0, k_sum / np.maximum(n_positive, 1), 0.0)
    g = np.where(mean_positive > 1.0, 1.0 - 1.0 / np.where(mean_positive > 0, mean_positive, 1), 0)
    tail = (1 - level) / 2 * 100
    h_low, h_high = np.percentile(h, [tail, 100 - tail])
    g_low, g_high = np.percentile(g, [tail, 100 - tail])
    return Interval(float(h_low), float(h_high), float(g_low), float(g_high), level, resamples)


def zig_probabilities(h: float, g: float, k: np.ndarray) -> np.ndarray:
    """P[K = k] under ZIG(h, g)."""
    k = np.asarray(k, dtype=np.int64)
    positive = h * (1 - g) * np.power(g, np.maximum(k - 1, 0).astype(np.float64))
    return np.where(k == 0, 1 - h, positive)


@dataclass(frozen=True)
class GoodnessOfFit:
    statistic: float  # Pearson's χ² (NaN when the test does not apply)
    dof: int | None  # ≥ 1; None when the test does not apply
    p_value: float  # NaN when the test does not apply
    bins: int  # after pooling the sparse tail
    reason: str | None = None  # why the test does not apply (None when it does)

    @property
    def applicable(self) -> bool:
        return self.dof is not None


def _not_applicable_reason(fitted: ZigFit, bins: int) -> str:
    """Why fewer than one degree of freedom is left: the histogram has too few distinct, well
    filled bins for a two-parameter law (typically every flipped scalar flipped once: ĝ = 0)."""
    if fitted.n_positive == 0:
        cause = "no scalar flipped (h_hat = 0)"
    elif fitted.g == 0:
        cause = "g_hat = 0 (every scalar that flipped has K = 1)"
    else:
        cause = f"too few scalars for bins expecting >= {MIN_EXPECTED:g} each"
    return f"not applicable: {cause}; {bins} bin(s) leave no degree of freedom for h and g"


def goodness_of_fit(k: npt.ArrayLike, count: npt.ArrayLike) -> GoodnessOfFit:
    """Pearson's χ² of the observed histogram against the fitted ZIG law. Bins k = 0 … max K
    and "K > max K"; adjacent bins are merged from the left until each expects ≥ 5 scalars (the
    remainder joins the last bin). Degrees of freedom = bins − 1 − 2 fitted parameters; when
    fewer than one is left the test does not apply: NaN statistic and p-value, ``dof`` None and
    the ``reason``."""
    ks, counts = _histogram(k, count)
    fitted = fit(ks, counts)
    n = fitted.n
    values = np.arange(int(ks.max()) + 1)
    expected_by_k = n * zig_probabilities(fitted.h, fitted.g, values)
    expected_all = np.append(expected_by_k, max(n - expected_by_k.sum(), 0.0))
    observed_all = np.append(np.bincount(ks, weights=counts, minlength=values.size), 0.0)
    observed: list[float] = []
    expected: list[float] = []
    pending_obs = pending_exp = 0.0
    for o, e in zip(observed_all, expected_all, strict=True):
        pending_obs, pending_exp = pending_obs + o, pending_exp + e
        if pending_exp >= MIN_EXPECTED:
            observed.append(pending_obs)
            expected.append(pending_exp)
            pending_obs = pending_exp = 0.0
    if expected:
        observed[-1] += pending_obs
        expected[-1] += pending_exp
    else:
        observed, expected = [pending_obs], [pending_exp]
    obs, exp = np.array(observed), np.array(expected)
    dof = len(obs) - 1 - N_FITTED
    if dof < 1:
        reason = _not_applicable_reason(fitted, len(obs))
        return GoodnessOfFit(float("nan"), None, float("nan"), len(obs), reason)
    statistic = float((((obs - exp) ** 2) / np.where(exp > 0, exp, np.inf)).sum())
    return GoodnessOfFit(statistic, dof, float(stats.chi2.sf(statistic, dof)), len(obs))


def _negative_binomial_log_likelihood(r: float, ys: np.ndarray, counts: np.ndarray) -> float:
    """Profile log-likelihood of NB(r, q) at the MLE q̂ = ȳ/(r + ȳ), for Y = K − 1 ≥ 0."""
    mean = float((ys * counts).sum() / counts.sum())
    if mean == 0:
        return 0.0
    q = mean / (r + mean)
    terms = special.gammaln(ys + r) - special.gammaln(r) - special.gammaln(ys + 1)
    terms = terms + r * np.log1p(-q) + ys * np.log(q)
    return float((counts * terms).sum())


@dataclass(frozen=True)
class FloatingTest:
    decision: str  # "lock-in" (geometric tail), "floating" (peaked) or "heavier tail"
    statistic: float  # 2 (ℓ_NB − ℓ_geometric)
    p_value: float  # χ²₁ reference
    shape: float  # r̂ of the negative binomial (1: geometric)
    level: float


R_BOUNDS = (1e-3, 1e4)


def floating_test(k: npt.ArrayLike, count: npt.ArrayLike, *, level: float = 0.05) -> FloatingTest:
    """Is K − 1 | K ≥ 1 geometric (lock-in, Theorem 3.6) or not? Likelihood ratio of the
    negative binomial NB(r̂, q̂) against the geometric (r = 1) it nests; the decision names the
    alternative's direction when the ratio is significant at ``level``."""
    ks, counts = _histogram(k, count)
    positive = ks > 0
    ys, ycounts = ks[positive] - 1, counts[positive]
    if ycounts.sum() < 2 or np.unique(ys).size < 2:
        return FloatingTest("lock-in", 0.0, 1.0, 1.0, level)
    geometric = _negative_binomial_log_likelihood(1.0, ys, ycounts)
    result = optimize.minimize_scalar(
        lambda log_r: -_negative_binomial_log_likelihood(float(np.exp(log_r)), ys, ycounts),
        bounds=tuple(np.log(R_BOUNDS)),
        method="bounded",
    )
    shape = float(np.exp(result.x))
    best = max(-float(result.fun), geometric)
    statistic = 2.0 * (best - geometric)
    p_value = float(stats.chi2.sf(statistic, 1))
    significant = p_value < level
    decision = ("floating" if shape > 1 else "heavier tail") if significant else "lock-in"
    return FloatingTest(decision, statistic, p_value, shape, level)
