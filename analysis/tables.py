"""The analysis tables of a sweep: lock-in statistics per trial and tensor, and seed aggregates.

- :func:`lockin_table` — per trial, pooled over its tracked scalars: ĥ, ĝ (C.4.2) with a
  bootstrap interval, the χ² goodness of fit (``gof_reason``: why it does not apply, e.g. ĝ = 0)
  and the lock-in/floating decision (Theorem D.33);
  per tracked tensor: ĥ and ĝ (vectorised over all trials and tensors).
- :func:`seed_summary` — per grid point (every grid axis and point field but the seed): mean,
  std and n over seeds of ĥ, ĝ, flip_mean, the final flip ratio and the validation metric.
  Sampled axes are continuous and are not grouped.
"""

from __future__ import annotations

import pandas as pd

from signlock.analysis.lockin import bootstrap, fit, floating_test, goodness_of_fit
from signlock.analysis.sweep_data import POOLED, Sweep


def _row(trial: str, tensor: str, hist: pd.DataFrame, ci: bool, **bootstrap_args) -> dict:
    k, count = hist["k"].to_numpy(), hist["count"].to_numpy()
    fitted = fit(k, count)
    gof = goodness_of_fit(k, count)
    floating = floating_test(k, count)
    row = {
        "trial": trial,
        "tensor": tensor,
        "n": fitted.n,
        "h_hat": fitted.h,
        "g_hat": fitted.g,
        "gof_chi2": gof.statistic,
        "gof_dof": gof.dof,
        "gof_p": gof.p_value,
        "gof_reason": gof.reason,
        "regime": floating.decision,
        "regime_lr": floating.statistic,
        "regime_p": floating.p_value,
        "nb_shape": floating.shape,
    }
    if ci:
        interval = bootstrap(k, count, **bootstrap_args)
        row.update(
            h_low=interval.h_low, h_high=interval.h_high, g_low=interval.g_low,
            g_high=interval.g_high,
        )  # fmt: skip
    return row


def _interval(hist: pd.DataFrame, resamples: int, level: float, seed: int) -> dict[str, float]:
    found = bootstrap(hist["k"], hist["count"], resamples=resamples, level=level, seed=seed)
    return {"h_low": found.h_low, "h_high": found.h_high, "g_low": found.g_low,
            "g_high": found.g_high}  # fmt: skip


def per_tensor_fits(flips: pd.DataFrame) -> pd.DataFrame:
    """ĥ, ĝ (C.4.2) of every (trial, tensor) histogram at once, from its sufficient statistics
    (n, #{K>0}, ΣK) — vectorised, for sweeps with thousands of trials × hundreds of tensors."""
    weighted = flips.assign(
        positive=flips["count"].where(flips["k"] > 0, 0), k_sum=flips["k"] * flips["count"]
    )
    sums = weighted.groupby(["trial", "tensor"], sort=True)[["count", "positive", "k_sum"]].sum()
    mean_positive = sums["k_sum"] / sums["positive"].where(sums["positive"] > 0)
    table = pd.DataFrame(
        {
            "n": sums["count"],
            "h_hat": sums["positive"] / sums["count"],
            "g_hat": (1 - 1 / mean_positive).where(mean_positive > 1, 0.0),
        }
    )
    return table.reset_index()


def lockin_table(
    sweep: Sweep,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    per_tensor: bool = True,
    per_tensor_ci: bool = False,
) -> pd.DataFrame:
    """Lock-in statistics of every finished trial: the pooled histogram with its bootstrap
    interval, goodness of fit and regime test; each tensor's (ĥ, ĝ) when ``per_tensor``, with
    a bootstrap interval too when ``per_tensor_ci`` (cost: trials × tensors × resamples)."""
    trials = list(sweep.trials["name"])
    pooled = sweep.flips(tensors=[POOLED], trials=trials)
    rows = [
        _row(trial, POOLED, hist, True, resamples=resamples, level=confidence, seed=seed)
        for trial, hist in pooled.groupby("trial", sort=True)
    ]
    table = pd.DataFrame(rows)
    if per_tensor:
        flips = sweep.flips(trials=trials)
        per = flips[flips["tensor"] != POOLED]
        tensors = per_tensor_fits(per)
        if per_tensor_ci:
            intervals = [
                {"trial": trial, "tensor": tensor, **_interval(hist, resamples, confidence, seed)}
                for (trial, tensor), hist in per.groupby(["trial", "tensor"], sort=True)
            ]
            tensors = tensors.merge(pd.DataFrame(intervals), on=["trial", "tensor"])
        table = pd.concat([table, tensors], ignore_index=True)
    table = _integer_columns(table)
    return table.sort_values(["trial", "tensor"], ignore_index=True) if len(table) else table


INTEGER_COLUMNS = ("n", "gof_dof")  # per-tensor rows have no goodness of fit: nullable Int64


def _integer_columns(table: pd.DataFrame) -> pd.DataFrame:
    for column in INTEGER_COLUMNS:
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


AGGREGATED = ("h_hat", "g_hat", "flip_mean", "final_flip_ratio")


def seed_summary(sweep: Sweep, pooled: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean, std and n over seeds per grid point. ``pooled``: the pooled rows of
    :func:`lockin_table`, whose (ĥ, ĝ) replace the trials' own (they are the same estimator)."""
    trials = sweep.trials.copy()
    if pooled is not None and len(pooled):
        fitted = pooled[pooled["tensor"] == POOLED].set_index("trial")
        trials["h_hat"] = trials["name"].map(fitted["h_hat"])
        trials["g_hat"] = trials["name"].map(fitted["g_hat"])
    keys = sweep.group_columns
    values = [c for c in (*AGGREGATED, sweep.validation_metric) if c in trials]
    if not len(trials):
        return pd.DataFrame()
    grouped = trials.groupby(keys, dropna=False) if keys else trials.groupby(lambda _: "all")
    summary = grouped[values].agg(["mean", "std", "count"])
    summary.columns = [f"{value}_{stat}".replace("_count", "_n") for value, stat in summary.columns]
    return summary.reset_index()
