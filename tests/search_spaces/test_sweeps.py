"""Sweep presets: every sweep of the paper builds, validates and has an offline -smoke size."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import pytest

from signlock.search_spaces.spec import SweepSpec
from signlock.search_spaces.sweeps import (
    A_INIT_GRID,
    BATCH_SIZE_GRID,
    LAM_FLOAT_GRID,
    LAM_GRID,
    LR_GRID,
    SCALE_PRESETS,
    SWEEP_PRESETS,
    WIDTH_GRID,
    sweep_preset,
)
from signlock.trainables.errors import ConfigError
from signlock.trainables.models import SCALE_CONFIGS, scale_model_config

FULL = [name for name in SWEEP_PRESETS if not name.endswith("-smoke")]
SMOKE = [name for name in SWEEP_PRESETS if name.endswith("-smoke")]

EXPECTED_TRIALS = {
    "enhancement": (5 * 7 + 1) * 3,
    "lock-in-tail": 4 * 3,
    "schedules": 4 * 3,
    "batch-size": 11 * 3,
    "width": 5 * 3,
    "scale": 12,
    "floating": 9 * 3,
    "vision-enhancement": (5 * 7 + 1) * 3,
    "vision-lock-in-tail": 4 * 3,
    "vision-cnn-lock-in-tail": 4 * 3,
    "compression": (3 * 4 + 1) * 3,
    "compression-text8": (3 * 4 + 1) * 3,
}


def configs(spec: SweepSpec) -> list:
    return [spec.trial_config(o) for o in spec.grid_overrides()]


@pytest.mark.parametrize("name", list(SWEEP_PRESETS))
def test_every_preset_builds_and_every_trial_validates(name):
    spec = sweep_preset(name)
    assert isinstance(spec, SweepSpec) and spec.name == name
    overrides = spec.grid_overrides()
    names = [o["name"] for o in overrides]
    assert len(set(names)) == len(names) == spec.n_trials()
    cfgs = configs(spec)
    assert [c.name for c in cfgs] == names
    assert [c.seed for c in cfgs] == [o["seed"] for o in overrides]
    assert spec.description


def test_presets_are_paired_with_smoke_sizes_and_counted():
    assert sorted(FULL) == sorted(EXPECTED_TRIALS)
    assert sorted(SMOKE) == sorted(f"{name}-smoke" for name in FULL)
    for name, n in EXPECTED_TRIALS.items():
        assert sweep_preset(name).n_trials() == n, name


@pytest.mark.parametrize("name", FULL)
def test_full_presets_cite_the_paper(name):
    doc = SWEEP_PRESETS[name].__doc__ or ""
    assert re.search(r"\b[C-E]\.\d", doc), doc


@pytest.mark.parametrize("name", SMOKE)
def test_smoke_presets_are_small_and_offline(name):
    spec = sweep_preset(name)
    assert spec.n_trials() <= 4
    assert spec.cpus_per_trial <= 2 and spec.gpus_per_trial == 0
    for cfg in configs(spec):
        assert cfg.steps <= 100
        assert cfg.data.eval_batches <= 3
        assert cfg.data.path is None
        if cfg.model.kind == "cnn":  # its own offline images, a tiny CNN
            assert cfg.data.dataset == "synthetic-images" and max(cfg.model.channels) <= 16
            continue
        assert cfg.data.dataset == "synthetic"
        assert cfg.model.d_model <= 64
        assert cfg.data.synthetic_seq_len <= cfg.model.context_length


def test_full_presets_use_the_papers_datasets():
    datasets = {name: {c.data.dataset for c in configs(sweep_preset(name))} for name in FULL}
    for name, found in datasets.items():
        if name.startswith("vision"):
            assert found == {"mnist"}, name
        elif name == "compression-text8":
            assert found == {"text8"}
        else:
            assert found == {"tinyshakespeare"}, name


def test_enhancement_grid_baseline_and_recipe():
    cfgs = configs(sweep_preset("enhancement"))
    pairs = [(c.init.a_init, c.regularizer.lam) for c in cfgs]
    grid = list(itertools.product(A_INIT_GRID, LAM_GRID))
    assert pairs == [p for p in grid for _ in range(3)] + [(0.0, 0.0)] * 3
    assert [c.seed for c in cfgs] == [0, 1, 2] * 36
    templated, baseline = cfgs[:-3], cfgs[-3:]
    assert all(c.init.template_rank == 2 and c.init.template_seed == 1234 for c in templated)
    assert all(c.init.template_rank is None for c in baseline)
    assert {(c.steps, c.optim.lr, c.data.seq_len, c.data.batch_size) for c in cfgs} == {
        (12000, 3e-4, 64, 64)
    }
    assert {(c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.d_ff) for c in cfgs} == {
        (128, 2, 4, 256)
    }
    assert {c.regularizer.hold_fraction for c in cfgs} == {0.5}


def test_lock_in_tail_and_floating_grids():
    tail = configs(sweep_preset("lock-in-tail"))
    assert sorted({c.optim.lr for c in tail}) == sorted(LR_GRID)
    assert {c.steps for c in tail} == {2000}
    floating = configs(sweep_preset("floating"))
    assert sorted({c.regularizer.lam_float for c in floating}) == sorted(LAM_FLOAT_GRID)
    assert {(c.regularizer.rho_f, c.steps) for c in floating} == {(1e-2, 2000)}


def test_schedule_sweep_constant_without_warmup_and_three_warmup_decays():
    cfgs = configs(sweep_preset("schedules"))
    kinds = [(c.schedule.kind, c.schedule.warmup_steps) for c in cfgs[::3]]
    assert kinds == [("constant", 0), ("cosine", 100), ("exponential", 100), ("inverse", 100)]
    assert {(c.steps, c.optim.lr) for c in cfgs} == {(2000, 3e-4)}


def test_batch_size_sweep_varies_only_the_training_batch():
    cfgs = configs(sweep_preset("batch-size"))
    assert sorted({c.data.batch_size for c in cfgs}) == list(BATCH_SIZE_GRID)
    assert {c.data.eval_batch_size for c in cfgs} == {64}


def test_width_sweep_keeps_heads_dividing_and_ff_twice_the_width():
    cfgs = configs(sweep_preset("width"))
    assert [c.model.d_model for c in cfgs[::3]] == list(WIDTH_GRID)
    for c in cfgs:
        assert c.model.d_ff == 2 * c.model.d_model and c.model.d_model % c.model.n_heads == 0
        assert c.model.sigma_init == 0.02 and c.model.n_layers == 2


def test_scale_sweep_runs_the_twelve_table_1_models():
    cfgs = configs(sweep_preset("scale"))
    assert len(SCALE_PRESETS) == 12 and "scale-debug" not in SCALE_PRESETS
    assert [c.model for c in cfgs] == [scale_model_config(n) for n in SCALE_PRESETS]
    assert [(c.model.d_model, c.model.n_layers, c.model.n_heads) for c in cfgs] == [
        (SCALE_CONFIGS[n].d_model, SCALE_CONFIGS[n].n_layers, SCALE_CONFIGS[n].n_heads)
        for n in SCALE_PRESETS
    ]
    assert {(c.steps, c.data.batch_size, c.optim.grad_clip) for c in cfgs} == {(1000, 1, 1.0)}
    assert sweep_preset("scale").gpus_per_trial == 1


def test_vision_and_compression_grids():
    vision = configs(sweep_preset("vision-enhancement"))
    assert {c.model.kind for c in vision} == {"mlp"}
    assert all(c.init.template_rank is None for c in vision)
    assert vision[-1].init.a_init == 0.0 and vision[-1].regularizer.lam == 0.0
    comp = configs(sweep_preset("compression"))
    pairs = sorted({(c.init.a_init, c.regularizer.lam) for c in comp})
    assert pairs == [(0.0, 0.0)] + [
        (a, lam) for a in (0.01, 0.02, 0.03) for lam in (0.0, 1e-4, 3e-4, 1e-3)
    ]
    assert all(c.regularizer.projection and c.init.template_dist == "uniform" for c in comp)


def test_unknown_sweep_preset():
    with pytest.raises(ConfigError) as info:
        sweep_preset("nope")
    assert info.value.field == "sweep preset" and "enhancement" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOKE)
def test_smoke_sweeps_run_offline(tmp_path: Path, name):
    from signlock.trainables.trainer import run_trial

    spec = sweep_preset(name)
    start = time.perf_counter()
    for overrides in spec.grid_overrides():
        summary = run_trial(
            spec.trial_config(overrides), tmp_path / overrides["name"], progress=False
        )
        assert summary["steps"] == spec.trial_config(overrides).steps
    assert time.perf_counter() - start < 60
