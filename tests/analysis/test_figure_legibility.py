"""Figures read at the size the report shows them: tick labels apart, integer k on integer ticks,
a panel without flips says so, and every grid point of a two-field sweep has its own labelled
line (issue 16)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from signlock.analysis.figures import hg_figure, k_histogram_figure, pareto_figure, tail_figure
from signlock.analysis.sweep_data import POOLED, Sweep
from signlock.analysis.tables import lockin_table, seed_summary
from tests.analysis.test_lockin import histogram, simulate_zig
from tests.analysis.test_preset_figures import planned_sweep, with_results

SCALARS = 2000


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def simulated_sweep(preset: str, directory: Path, *, flips: bool = True, seed: int = 0) -> Sweep:
    """``preset`` as if finished: summary numbers and a pooled K histogram per trial written to
    ``directory/flips`` as the sweep writes it; without ``flips`` every K is 0."""
    sweep = with_results(planned_sweep(preset), seed)
    rng = np.random.default_rng(seed)
    for name in sweep.trials["name"]:
        h, g = (rng.uniform(0.05, 0.6), rng.uniform(0.1, 0.7)) if flips else (0.0, 0.0)
        ks, counts = histogram(simulate_zig(h, g, SCALARS, rng))
        partition = directory / "flips" / f"trial={name}"
        partition.mkdir(parents=True)
        write_histogram(partition, ks, counts)
    return Sweep(directory, sweep.record, sweep.trials)


def write_histogram(partition: Path, ks: np.ndarray, counts: np.ndarray) -> None:
    frame = pd.DataFrame({"tensor": POOLED, "k": ks.astype(np.int64), "count": counts})
    frame.astype({"count": np.int64}).to_parquet(partition / "part-0.parquet")


def pooled_lockin(sweep: Sweep) -> pd.DataFrame:
    return lockin_table(sweep, resamples=20, per_tensor=False)


def visible_xticks(ax: Axes) -> list[float]:
    low, high = sorted(ax.get_xlim())
    return [t for t in ax.get_xticks() if low <= t <= high]


def drawn_xtick_labels(figure: Figure, ax: Axes) -> list:
    figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    return [tick.label1 for tick in ax.xaxis.get_major_ticks()
            if low <= tick.get_loc() <= high and tick.label1.get_visible()
            and tick.label1.get_text()]  # fmt: skip


@pytest.mark.parametrize(
    "preset", ["enhancement-smoke", "compression-smoke", "lock-in-tail", "width"]
)
def test_hg_tick_labels_do_not_run_together(preset, tmp_path):
    sweep = simulated_sweep(preset, tmp_path)
    lockin = pooled_lockin(sweep)
    fits = lockin.set_index("trial")
    trials = sweep.trials.assign(h_hat=sweep.trials["name"].map(fits["h_hat"]),
                                 g_hat=sweep.trials["name"].map(fits["g_hat"]))  # fmt: skip
    summary = seed_summary(sweep, lockin)
    for axis in sweep.figure_axes:
        figure = hg_figure(sweep, summary, trials, axis)
        renderer = figure.canvas.get_renderer()
        for ax in figure.axes:
            labels = drawn_xtick_labels(figure, ax)
            boxes = [label.get_window_extent(renderer) for label in labels]
            assert len(boxes) >= 2
            for left, right, text in zip(boxes, boxes[1:], labels, strict=False):
                assert left.x1 < right.x0, f"{axis.key}: {text.get_text()} overlaps the next"


def test_a_tail_panel_without_flips_says_so(tmp_path):
    sweep = simulated_sweep("enhancement-smoke", tmp_path, flips=False)
    figure = tail_figure(sweep, pooled_lockin(sweep))
    for ax in figure.axes:
        texts = [t.get_text() for t in ax.texts]
        assert "no flips (K = 0 for every weight)" in texts


def test_a_tail_panel_with_flips_has_no_such_note(tmp_path):
    sweep = simulated_sweep("enhancement-smoke", tmp_path)
    figure = tail_figure(sweep, pooled_lockin(sweep))
    assert all(not ax.texts and ax.lines for ax in figure.axes)


@pytest.mark.parametrize("figure_of", [tail_figure, k_histogram_figure])
@pytest.mark.parametrize("flips", [True, False])
def test_integer_k_gets_integer_ticks(figure_of, flips, tmp_path):
    sweep = simulated_sweep("enhancement-smoke", tmp_path, flips=flips, seed=3)
    figure = figure_of(sweep, pooled_lockin(sweep))
    figure.canvas.draw()
    for ax in figure.axes:
        ticks = visible_xticks(ax)
        if not flips and figure_of is tail_figure:
            assert ticks == []  # an empty panel carries its note, not a k axis
        else:
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_integer_ticks_when_every_trial_flips_at_most_once(tmp_path):
    """The smoke sweep of docs/tail.png: K ∈ {0, 1} gave ticks 0.96 … 1.04."""
    sweep = simulated_sweep("enhancement-smoke", tmp_path, flips=False)
    for partition in (tmp_path / "flips").iterdir():
        write_histogram(partition, np.array([0, 1]), np.array([SCALARS - 10, 10]))
    lockin = pooled_lockin(sweep)
    for figure in (tail_figure(sweep, lockin), k_histogram_figure(sweep, lockin)):
        figure.canvas.draw()
        for ax in figure.axes:
            ticks = visible_xticks(ax)
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def names_both(label: str) -> bool:
    return "init.a_init" in label and "regularizer.lam" in label


def test_tail_lines_name_every_varied_grid_field(tmp_path):
    """compression-smoke: a_init = 0.02 with λ ∈ {0, 1e-3}, plus the (0, 0) point."""
    sweep = simulated_sweep("compression-smoke", tmp_path)
    figure = tail_figure(sweep, pooled_lockin(sweep))
    entries: list[str] = []
    for ax in figure.axes:
        legend = ax.get_legend()
        assert legend is not None, ax.get_title()
        labels = [text.get_text() for text in legend.get_texts()]
        colors = {line.get_color() for line in ax.lines if not line.get_label().startswith("_")}
        assert len(colors) == len(labels) == len(set(labels))
        entries += labels
    assert all(names_both(label) for label in entries)
    assert len(entries) == sweep.trials.groupby(sweep.group_columns).ngroups == 3
    assert set(entries) == {
        "init.a_init = 0, regularizer.lam = 0",
        "init.a_init = 0.02, regularizer.lam = 0",
        "init.a_init = 0.02, regularizer.lam = 0.001",
    }


@pytest.mark.parametrize("preset", ["compression-smoke", "enhancement"])
def test_pareto_points_name_and_distinguish_every_grid_point(preset):
    sweep = with_results(planned_sweep(preset))
    figure = pareto_figure(sweep, "flip_mean", "val_ppl")
    ax = figure.axes[0]
    points = [line for line in ax.lines if not line.get_label().startswith("_")]
    labels = [line.get_label() for line in points]
    styles = {(line.get_color(), line.get_marker()) for line in points}
    grid_points = sweep.trials.groupby(sweep.group_columns, dropna=False).ngroups
    assert len(set(labels)) == len(styles) == grid_points
    assert all(names_both(label) for label in labels)
    legend = {text.get_text() for text in ax.get_legend().get_texts()}
    assert set(labels) <= legend
