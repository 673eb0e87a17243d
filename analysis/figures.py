"""The paper's figures from a sweep's tables (matplotlib, Agg backend, PNG).

Each function returns a ``Figure``; :func:`save` writes it. Captions name the paper's figure the
plot reproduces.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from signlock.analysis.pareto import pareto_mask
from signlock.analysis.sweep_data import (
    POOLED,
    Sweep,
    axis_column,
    is_sampled,
    log_spaced,
)
from signlock.search_spaces.axes import Axis
from signlock.trainables.lockin_stats import zig_tail

MAX_PANELS = 6
MAX_LINES = 12  # trials drawn per panel or regime; a sweep of thousands stays readable
PAPER_FIGURE = {  # the axis a sweep varies → the paper's figure of (ĥ, ĝ) against it
    "init.a_init": "Fig. 7, 17",
    "init.c_gap": "Fig. 7, 17",
    "regularizer.lam": "Fig. 7, 17",
    "schedule.kind": "Fig. 10, 11",
    "data.batch_size": "Fig. 12",
    "model.d_model": "Fig. 13",
    "model.n_layers": "Fig. 4",  # the scale family of Table 1 varies depth with width
    "preset": "Fig. 4",
}


def save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _caption(figure: Figure, text: str) -> None:
    figure.text(0.5, -0.02, text, ha="center", va="top", fontsize=9, wrap=True)


def _label(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def tail_figure(sweep: Sweep, lockin: pd.DataFrame) -> Figure:
    """P[K ≥ k] of each trial's pooled K on a semi-log axis with its fitted ĥ ĝ^(k−1) line,
    one panel per value of the first grid axis (Fig. 3, 16)."""
    flips = sweep.flips(tensors=[POOLED], trials=list(sweep.trials["name"]))
    fits = lockin[lockin["tensor"] == POOLED].set_index("trial")
    axis = sweep.grid_axes[0] if sweep.grid_axes else None
    column = axis_column(axis) if axis else None
    trials = sweep.trials.set_index("name")
    panels = sorted(trials[column].dropna().unique())[:MAX_PANELS] if column else [None]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False, layout="constrained"
    )
    for ax, value in zip(axes[0], panels, strict=True):
        names = trials.index if value is None else trials.index[trials[column] == value]
        for name in names[:MAX_LINES]:
            hist = flips[flips["trial"] == name].sort_values("k")
            if hist.empty or name not in fits.index:
                continue
            n = hist["count"].sum()
            tail = hist["count"][::-1].cumsum()[::-1] / n
            positive = hist["k"] >= 1
            (line,) = ax.semilogy(hist["k"][positive], tail[positive], "o", ms=3, label=name)
            k = np.arange(1, int(hist["k"].max()) + 1)
            fitted = zig_tail(fits.loc[name, "h_hat"], fits.loc[name, "g_hat"], k)
            ax.semilogy(k, np.where(fitted > 0, fitted, np.nan), "-", color=line.get_color())
        ax.set_xlabel("k")
        ax.set_ylabel("P[K ≥ k]")
        ax.set_title(f"{axis.key} = {_label(value)}" if axis else sweep.name, fontsize=9)
    _caption(figure, "Tail of K (pooled) with the fitted ĥ ĝ^(k−1) (cf. Fig. 3, 16).")
    return figure


def _errorbar_lines(ax, summary: pd.DataFrame, x: str, y: str, by: str | None) -> None:
    groups = [(None, summary)] if by is None else summary.groupby(by, dropna=False)
    for value, group in groups:
        group = group.sort_values(x)
        label = None if by is None else f"{by.removeprefix('config.')} = {_label(value)}"
        ax.errorbar(group[x], group[f"{y}_mean"], yerr=group[f"{y}_std"].fillna(0), marker="o",
                    ms=4, capsize=3, label=label)  # fmt: skip


def hg_figure(sweep: Sweep, summary: pd.DataFrame, trials: pd.DataFrame, axis: Axis) -> Figure:
    """ĥ and ĝ against one swept axis: seed means with std error bars, one line per value of
    the other grid axis; scatter over trials for a sampled axis (Fig. 7, 17, 10–13, 4)."""
    column = axis_column(axis)
    others = [c for c in sweep.group_columns if c != column and c.removeprefix("config.")
              not in sweep.point_keys]  # fmt: skip
    figure, (ax_h, ax_g) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, stat, name in ((ax_h, "h_hat", "ĥ"), (ax_g, "g_hat", "ĝ")):
        if is_sampled(axis):
            ax.scatter(trials[column], trials[stat], s=12)
        else:
            by = others[0] if len(others) == 1 else None
            _errorbar_lines(ax, summary, column, stat, by)
            if by is not None:
                ax.legend(fontsize=7)
        if log_spaced(axis):
            ax.set_xscale("symlog", linthresh=_smallest_positive(trials[column]))
        ax.set_xlabel(axis.key)
        ax.set_ylabel(name)
    figure_no = PAPER_FIGURE.get(axis.key, "")
    _caption(figure, f"(ĥ, ĝ) against {axis.key}" + (f" (cf. {figure_no})." if figure_no else "."))
    return figure


def _smallest_positive(values: pd.Series) -> float:
    positive = pd.to_numeric(values, errors="coerce")
    positive = positive[positive > 0]
    return float(positive.min()) if len(positive) else 1.0


def pareto_figure(sweep: Sweep, x: str, y: str) -> Figure:
    """``y`` against ``x`` (both minimised), the non-dominated points ringed (Fig. 5, 18): seed
    means with std error bars, one curve per value of the first grid field across the second;
    for sampled axes (Optuna, random search) every trial as a point."""
    figure, ax = plt.subplots(figsize=(5.5, 4))
    trials = sweep.trials
    keys = sweep.group_columns
    if any(is_sampled(a) for a in sweep.axes) or not keys:
        points = trials[[x, y]].rename(columns={x: "x", y: "y"})
        ax.scatter(points["x"], points["y"], s=14, label="trials")
    else:
        stats = trials.groupby(keys, dropna=False)[[x, y]].agg(["mean", "std"])
        points = pd.DataFrame(
            {"x": stats[(x, "mean")], "y": stats[(y, "mean")], "x_std": stats[(x, "std")],
             "y_std": stats[(y, "std")]}
        ).reset_index()  # fmt: skip
        groups = points.groupby(keys[0], dropna=False) if len(keys) >= 2 else [(None, points)]
        for value, group in groups:
            group = group.sort_values(keys[1]) if len(keys) >= 2 else group
            label = None if value is None else f"{keys[0].removeprefix('config.')}={_label(value)}"
            ax.errorbar(group["x"], group["y"], xerr=group["x_std"].fillna(0),
                        yerr=group["y_std"].fillna(0), marker="o", ms=4, capsize=3,
                        label=label)  # fmt: skip
    front = pareto_mask(points[["x", "y"]].to_numpy())
    ax.scatter(points.loc[front, "x"], points.loc[front, "y"], s=120, facecolors="none",
               edgecolors="black", label="non-dominated")  # fmt: skip
    ax.legend(fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    _caption(figure, f"Pareto front of {y} against {x}, both minimised (cf. Fig. 5, 18).")
    return figure


def k_histogram_figure(sweep: Sweep, lockin: pd.DataFrame) -> Figure:
    """Pooled K histograms, lock-in trials against floating ones (Fig. 14)."""
    flips = sweep.flips(tensors=[POOLED], trials=list(sweep.trials["name"]))
    regimes = lockin[lockin["tensor"] == POOLED].set_index("trial")["regime"]
    figure, ax = plt.subplots(figsize=(5.5, 3.6))
    for regime, color in (("lock-in", "tab:blue"), ("floating", "tab:red"),
                          ("heavier tail", "tab:green")):  # fmt: skip
        names = regimes.index[regimes == regime]
        first = True
        for name in names[:MAX_LINES]:
            hist = flips[flips["trial"] == name]
            ax.plot(hist["k"], hist["count"] / hist["count"].sum(), "-", color=color, alpha=0.6,
                    label=f"{regime} ({len(names)})" if first else None)  # fmt: skip
            first = False
    ax.set_yscale("log")
    ax.set_xlabel("K (effective sign flips)")
    ax.set_ylabel("fraction of scalars")
    ax.legend(fontsize=7)
    _caption(figure, "K histograms of lock-in and sign-floating trials (cf. Fig. 14).")
    return figure


MAX_BLOCK_LINES = 12


def flips_over_time_figure(sweep: Sweep) -> Figure:
    """flip(t) against initialisation and the step flip rate over training, per block (averaged
    over the sweep's trials, weighted by tracked scalars) and pooled (Fig. 2c)."""
    every = sweep.blocks()
    pooled = every[every["block"] == POOLED]
    blocks = every[every["block"] != POOLED]
    figure, (ax_flip, ax_rate) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    names = list(dict.fromkeys(blocks["block"]))
    shown = names if len(names) <= MAX_BLOCK_LINES else names[:: len(names) // MAX_BLOCK_LINES]
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(shown), 1)))
    for block, color in zip(shown, colors, strict=False):
        rows = blocks[blocks["block"] == block]
        ax_flip.plot(rows["step"], rows["flip_vs_init"], color=color, lw=1, label=block)
        ax_rate.plot(rows["step"], rows["step_flip_rate"], color=color, lw=1, label=block)
    ax_flip.plot(pooled["step"], pooled["flip_vs_init"], "k--", lw=2, label="pooled")
    ax_rate.plot(pooled["step"], pooled["step_flip_rate"], "k--", lw=2, label="pooled")
    ax_flip.set_ylabel("flip(t) vs initialisation")
    ax_rate.set_ylabel("step flip rate")
    ax_rate.set_yscale("symlog", linthresh=1e-6)
    for ax in (ax_flip, ax_rate):
        ax.set_xlabel("step")
    ax_flip.legend(fontsize=6, ncol=2)
    _caption(figure, "Sign flips over training per block and pooled, mean over trials "
             "(cf. Fig. 2c).")  # fmt: skip
    return figure
