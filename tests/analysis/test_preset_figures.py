"""Every preset sweep of the paper gets the paper's figure for it (from its axes or points)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from signlock.analysis.figures import PAPER_FIGURE, pareto_figure
from signlock.analysis.sweep_data import Sweep
from signlock.search_spaces.axes import Axis
from signlock.search_spaces.sweeps import SWEEP_PRESETS
from signlock.trainables.records import SweepContext, SweepRecord


def planned_sweep(preset: str) -> Sweep:
    """The preset as if every trial had finished: its trials' varied fields, no results."""
    spec = SWEEP_PRESETS[preset]()
    context = SweepContext(preset, "/nowhere", spec.to_dict(), "sqlite:///x.db", "1", "run")
    record = SweepRecord(context, {"cpu": 1.0}, spec.n_trials(), None, 2, None)
    rows = []
    for point in spec.grid_overrides():
        flat = spec.trial_config(point).to_dict()
        row = {"name": point["name"]}
        for key in spec.varied_keys():
            value = flat
            for part in key.split("."):
                value = value[part]
            row[f"config.{key}"] = value
        rows.append(row)
    return Sweep(Path("/nowhere"), record, pd.DataFrame(rows))


@pytest.mark.parametrize(
    ("preset", "axis", "figure"),
    [
        ("enhancement", "init.a_init", "Fig. 7, 17"),
        ("enhancement", "regularizer.lam", "Fig. 7, 17"),
        ("schedules", "schedule.kind", "Fig. 10, 11"),
        ("batch-size", "data.batch_size", "Fig. 12"),
        ("width", "model.d_model", "Fig. 13"),
        ("scale", "model.n_layers", "Fig. 4"),
    ],
)
def test_the_sweep_draws_h_and_g_against_the_papers_axis(preset, axis, figure):
    sweep = planned_sweep(preset)
    assert axis in [a.key for a in sweep.figure_axes]
    assert PAPER_FIGURE[axis] == figure
    grouped = sweep.group_columns
    assert f"config.{axis}" in grouped and "config.seed" not in grouped


def test_points_of_one_model_are_one_group_over_seeds():
    sweep = planned_sweep("scale")
    groups = sweep.trials.groupby(sweep.group_columns).size()
    models = sweep.spec.n_trials() // len(sweep.spec.seeds)  # the base model and every point
    assert len(groups) == models == 12 and (groups == len(sweep.spec.seeds)).all()


def with_results(sweep: Sweep, seed: int = 0) -> Sweep:
    rng = np.random.default_rng(seed)
    n = len(sweep.trials)
    trials = sweep.trials.assign(flip_mean=rng.random(n), val_ppl=3 + rng.random(n))
    return Sweep(sweep.directory, sweep.record, trials)


@pytest.mark.parametrize("preset", ["enhancement", "scale", "enhancement-optuna"])
def test_the_pareto_figure_draws_grid_means_or_sampled_trials(preset):
    if preset == "enhancement-optuna":  # sampled axes: every trial is a point
        spec = SWEEP_PRESETS["enhancement-smoke"]()
        sweep = with_results(planned_sweep("enhancement-smoke"))
        sampled = replace(spec, axes=(Axis("init.a_init", "loguniform", (), 1e-3, 3e-2),))
        context = replace(sweep.record.context, spec=sampled.to_dict())
        sweep = Sweep(sweep.directory, replace(sweep.record, context=context), sweep.trials)
        expected_points = len(sweep.trials)
    else:
        sweep = with_results(planned_sweep(preset))
        expected_points = sweep.trials.groupby(sweep.group_columns).ngroups
    figure = pareto_figure(sweep, "flip_mean", "val_ppl")
    drawn = sum(
        len(c.get_offsets()) for c in figure.axes[0].collections if c.get_label() != "non-dominated"
    )
    lines = sum(len(line.get_xdata()) for line in figure.axes[0].lines)
    assert max(drawn, lines) >= expected_points
