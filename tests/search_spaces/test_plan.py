"""Sweep plans: trial counts, meta-device parameter counts, tokens and 6·N·D FLOPs."""

from __future__ import annotations

import time

import pytest

from signlock.search_spaces.plan import (
    SweepPlan,
    format_plan,
    model_parameters,
    plan_sweep,
    tokens_per_step,
)
from signlock.search_spaces.presets import trial_preset
from signlock.search_spaces.spec import SweepSpec
from signlock.search_spaces.sweeps import SCALE_PRESETS, sweep_preset
from signlock.trainables.config import ModelConfig
from signlock.trainables.models import (
    SCALE_CONFIGS,
    TINYSHAKESPEARE_VOCAB,
    build_model,
    count_parameters,
)


def test_enhancement_plan():
    plan = plan_sweep(sweep_preset("enhancement"))
    n_params = count_parameters(
        build_model(ModelConfig(), vocab_size=TINYSHAKESPEARE_VOCAB, device="meta")
    )
    assert isinstance(plan, SweepPlan)
    assert plan.n_trials == len(plan.trials) == 108
    assert set(plan.steps_per_trial) == {12000} and plan.total_steps == 108 * 12000
    assert list(plan.params.values()) == [n_params]
    assert set(plan.tokens_per_step) == {64 * 64}
    assert plan.total_tokens == 108 * 12000 * 64 * 64
    assert plan.total_flops == pytest.approx(6 * n_params * plan.total_tokens)
    assert (plan.cpus_per_trial, plan.gpus_per_trial) == (1.0, 0.0)
    text = format_plan(plan)
    assert "108 trials" in text and len(text.splitlines()) > 5


def test_scale_plan_matches_table_1_without_allocating():
    start = time.perf_counter()
    plan = plan_sweep(sweep_preset("scale"))
    assert time.perf_counter() - start < 20  # meta device: no 12.9B allocation
    assert plan.n_trials == 12 and len(plan.params) == 12
    by_name = {t.model.split(" ")[0]: t.params for t in plan.trials}
    assert list(by_name) == list(SCALE_PRESETS)
    for name, params in by_name.items():
        assert round(params / 1e9, 3) == SCALE_CONFIGS[name].table_params_billion, name
    assert by_name["scale-12.9b"] == pytest.approx(12.887e9, rel=1e-4)
    assert set(plan.tokens_per_step) == {64}  # micro-batch 1 × L = 64 (C.5)
    assert plan.gpus_per_trial == 1
    text = format_plan(plan)
    assert "12 trials" in text and "scale-12.9b" in text and "12.887B" in text


def test_plan_counts_samples_for_the_mlp_and_synthetic_rows():
    vision = plan_sweep(sweep_preset("vision-enhancement"))
    assert vision.unit == "samples" and set(vision.tokens_per_step) == {128}
    assert "samples" in format_plan(vision)
    cfg = trial_preset("synthetic-smoke")
    assert tokens_per_step(cfg) == cfg.data.batch_size * cfg.data.synthetic_seq_len
    assert model_parameters(cfg) > 0


def test_plan_repeats_grid_points_num_samples_times_and_uses_budget_for_optuna():
    base = {
        "name": "r",
        "base": "charlm-lockin",
        "axes": {
            "init.a_init": {"grid": [0.005, 0.02]},
            "regularizer.lam": {"loguniform": [1e-4, 0.5]},
        },
        "seeds": [0],
        "num_samples": 3,
    }
    plan = plan_sweep(SweepSpec.from_dict(base))
    assert plan.n_trials == len(plan.trials) == 6
    assert "2 grid points × 3 samples" in format_plan(plan)
    optuna = SweepSpec.from_dict(
        {**base, "axes": {"init.a_init": {"uniform": [0.005, 0.02]}}, "num_samples": 1}
        | {"search": "optuna", "budget": 5}
    )
    plan = plan_sweep(optuna)
    assert plan.n_trials == len(plan.trials) == 5
    assert "5 trials" in format_plan(plan) and "Optuna" in format_plan(plan)


def test_width_plan_has_one_model_per_width():
    plan = plan_sweep(sweep_preset("width"))
    assert len(plan.params) == 5
    assert list(plan.params.values()) == sorted(plan.params.values())
