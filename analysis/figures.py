"""The paper's figures from a sweep's tables (matplotlib, Agg backend, PNG).

Each function returns a ``Figure``; :func:`save` writes it. Captions name the paper's figure the
plot reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

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
PANELS_PER_ROW = 3
MAX_LINES = 12  # trials drawn per panel or regime; a sweep of thousands stays readable
HG_XTICKS = 5  # at most this many bins on a linear (ĥ, ĝ) x axis: labels like 0.0125 stay apart
LEGEND_ROWS = 24
LEGEND_DROP_PT = 40  # tick labels and x label of a panel: its legend goes below them
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
NO_FLIPS = "no flips (K = 0 for every weight)"
NO_HISTOGRAMS = "no K histogram"
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
    one panel per value of the first grid axis, one colour per grid point (every varied field
    but the seed, named in the legend); a panel without flips says so (Fig. 3, 16)."""
    flips = sweep.flips(tensors=[POOLED], trials=list(sweep.trials["name"]))
    fits = lockin[lockin["tensor"] == POOLED].set_index("trial")
    axis = sweep.grid_axes[0] if sweep.grid_axes else None
    column = axis_column(axis) if axis else None
    trials = sweep.trials
    panels = sorted(trials[column].dropna().unique())[:MAX_PANELS] if column else [None]
    columns = _point_columns(sweep)
    figure, axes = _panel_grid(len(panels))
    for ax, value in zip(axes, panels, strict=False):
        shown = trials if value is None else trials[trials[column] == value]
        _tail_panel(ax, _grid_points(shown, columns), flips, fits)
        if columns != [column] and ax.get_legend_handles_labels()[1]:
            _legend_below(figure, ax)
        ax.set_xlabel("k")
        ax.set_ylabel("P[K ≥ k]")
        ax.set_title(f"{axis.key} = {_label(value)}" if axis else sweep.name, fontsize=9)
    _caption(figure, "Tail of K (pooled) with the fitted ĥ ĝ^(k−1) (cf. Fig. 3, 16).")
    return figure


def _legend_below(figure: Figure, ax: Axes) -> None:
    """The legend under the panel's x label, whatever the panel's height."""
    below = offset_copy(ax.transAxes, figure, y=-LEGEND_DROP_PT, units="points")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
              frameon=False)  # fmt: skip


def _panel_grid(n: int) -> tuple[Figure, list[Axes]]:
    """``n`` panels, at most PANELS_PER_ROW a row (the report shows figures at most ~12 in
    wide), one alone wide enough for a legend naming several fields; unused panels hidden."""
    rows, cols = math.ceil(n / PANELS_PER_ROW), min(n, PANELS_PER_ROW)
    figure, grid = plt.subplots(
        rows, cols, figsize=(max(4 * cols, 6), 3.8 * rows), squeeze=False, layout="constrained"
    )
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return figure, axes[:n]


def _point_columns(sweep: Sweep) -> list[str]:
    """The fields naming a grid point: its grid axes, or every varied field but the seed where
    the grid axes alone would give two grid points one name."""
    keys = sweep.group_columns
    grid = [axis_column(axis) for axis in sweep.grid_axes if axis_column(axis) in keys]
    trials = sweep.trials
    if grid and _n_groups(trials, grid) == _n_groups(trials, keys):
        return grid
    return keys


def _n_groups(trials: pd.DataFrame, columns: list[str]) -> int:
    return trials.groupby(columns, dropna=False).ngroups


def _point_label(columns: Sequence[str], values: Sequence[object]) -> str:
    return ", ".join(
        f"{c.removeprefix('config.')} = {_label(v)}" for c, v in zip(columns, values, strict=True)
    )


def _grid_points(trials: pd.DataFrame, columns: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, trials) per grid point; without varied fields, per trial (named by itself)."""
    if not columns:
        return [(name, trials[trials["name"] == name]) for name in trials["name"]]
    groups = trials.groupby(columns, dropna=False, sort=True)
    return [(_point_label(columns, values), group) for values, group in groups]


def _colors(n: int) -> list:
    palette = plt.colormaps["tab10" if n <= 10 else "tab20"].colors
    return [palette[i % len(palette)] for i in range(n)]


def _tail_panel(
    ax: Axes, points: list[tuple[str, pd.DataFrame]], flips: pd.DataFrame, fits: pd.DataFrame
) -> None:
    """At most MAX_LINES trials (every grid point's first seed before any second), one colour per
    grid point, its first line carrying the label."""
    shown = [(rank, i, name, label) for i, (label, group) in enumerate(points)
             for rank, name in enumerate(group["name"])]  # fmt: skip
    colors = _colors(len(points))
    labelled: set[int] = set()
    histograms = 0
    for _, point, name, label in sorted(shown)[:MAX_LINES]:
        hist = flips[flips["trial"] == name].sort_values("k")
        if hist.empty or name not in fits.index:
            continue
        histograms += 1
        first_label = label if point not in labelled else None
        if _tail_line(ax, hist, fits.loc[name], colors[point], first_label):
            labelled.add(point)
    if labelled:
        ax.set_yscale("log")
        _integer_ticks(ax)
    else:
        _note(ax, NO_FLIPS if histograms else NO_HISTOGRAMS)


def _tail_line(
    ax: Axes, hist: pd.DataFrame, fit: pd.Series, color: object, label: str | None
) -> bool:
    """The empirical P[K ≥ k] for k ≥ 1 as points and the fitted tail as a line; False when
    the histogram has no k ≥ 1 (nothing to draw)."""
    positive = hist["k"] >= 1
    if not positive.any():
        return False
    tail = hist["count"][::-1].cumsum()[::-1] / hist["count"].sum()
    ax.plot(hist["k"][positive], tail[positive], "o", ms=3, color=color, label=label)
    k = np.arange(1, int(hist["k"].max()) + 1)
    fitted = zig_tail(fit["h_hat"], fit["g_hat"], k)
    ax.plot(k, np.where(fitted > 0, fitted, np.nan), "-", color=color)
    return True


def _note(ax: Axes, text: str) -> None:
    """An empty panel: the reason in its middle, no ticks pretending there is an axis."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _integer_ticks(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


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
        elif pd.api.types.is_numeric_dtype(trials[column]):
            ax.xaxis.set_major_locator(MaxNLocator(nbins=HG_XTICKS))
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
    means with std error bars, one colour per value of the first grid field and one marker per
    value of the others, each grid point named in the legend by all its fields, a faint curve
    through each colour; for sampled axes (Optuna, random search) every trial as a point."""
    figure, ax = plt.subplots(figsize=(5.5, 4))
    trials = sweep.trials
    if any(is_sampled(a) for a in sweep.axes) or not sweep.group_columns:
        points = trials[[x, y]].rename(columns={x: "x", y: "y"})
        ax.scatter(points["x"], points["y"], s=14, label="trials")
    else:
        columns = _point_columns(sweep)
        points = _grid_means(trials, columns, x, y)
        _grid_point_markers(ax, points, columns)
    front = pareto_mask(points[["x", "y"]].to_numpy())
    ax.scatter(points.loc[front, "x"], points.loc[front, "y"], s=120, facecolors="none",
               edgecolors="black", label="non-dominated")  # fmt: skip
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1),
              ncol=math.ceil(entries / LEGEND_ROWS))  # fmt: skip
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    _caption(figure, f"Pareto front of {y} against {x}, both minimised (cf. Fig. 5, 18).")
    return figure


def _grid_means(trials: pd.DataFrame, columns: list[str], x: str, y: str) -> pd.DataFrame:
    """Per grid point: its fields, and x, y, x_std, y_std over seeds."""
    stats = trials.groupby(columns, dropna=False)[[x, y]].agg(["mean", "std"])
    return pd.DataFrame(
        {"x": stats[(x, "mean")], "y": stats[(y, "mean")], "x_std": stats[(x, "std")],
         "y_std": stats[(y, "std")]}
    ).reset_index()  # fmt: skip


def _codes(points: pd.DataFrame, columns: list[str]) -> np.ndarray:
    if not columns:
        return np.zeros(len(points), dtype=int)
    return points.groupby(columns, dropna=False, sort=True).ngroup().to_numpy()


def _grid_point_markers(ax: Axes, points: pd.DataFrame, columns: list[str]) -> None:
    """Colour from the first field, marker from the others: each grid point its own style."""
    color_codes, marker_codes = _codes(points, columns[:1]), _codes(points, columns[1:])
    colors = _colors(int(color_codes.max()) + 1)
    for code in np.unique(color_codes) if len(columns) > 1 else ():
        curve = points[color_codes == code].sort_values(columns[1:])
        ax.plot(curve["x"], curve["y"], "-", color=colors[code], lw=1, alpha=0.35)
    for row, color, marker in zip(points.to_dict("records"), color_codes, marker_codes,
                                  strict=True):  # fmt: skip
        ax.errorbar(row["x"], row["y"], xerr=np.nan_to_num(row["x_std"]),
                    yerr=np.nan_to_num(row["y_std"]), fmt="none", ecolor=colors[color],
                    alpha=0.5, capsize=2)  # fmt: skip
        ax.plot(row["x"], row["y"], linestyle="none", marker=MARKERS[marker % len(MARKERS)],
                ms=7, color=colors[color], mec="black", mew=0.5,
                label=_point_label(columns, [row[c] for c in columns]))  # fmt: skip


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
    _integer_ticks(ax)
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
