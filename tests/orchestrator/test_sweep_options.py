"""Sweep-level defaults applied before anything runs."""

from __future__ import annotations

import pytest

from signlock.orchestrator.sweep import SweepOptions, storage_path, with_checkpoints
from signlock.search_spaces.sweeps import sweep_preset
from signlock.trainables.errors import ConfigError


@pytest.mark.parametrize("name", ["enhancement", "lock-in-tail", "scale", "enhancement-smoke"])
def test_every_trial_checkpoints_about_ten_times_by_default(name):
    spec = with_checkpoints(sweep_preset(name), None)
    for overrides in spec.grid_overrides():
        cfg = spec.trial_config(overrides)
        assert cfg.checkpoint_every % cfg.log_every == 0
        assert cfg.steps // 20 <= cfg.checkpoint_every <= cfg.steps // 5


def test_explicit_and_own_checkpoint_intervals_are_kept():
    spec = with_checkpoints(sweep_preset("lock-in-tail"), 500)
    assert {spec.trial_config(o).checkpoint_every for o in spec.grid_overrides()} == {500}
    assert with_checkpoints(spec, None) is spec  # the base already checkpoints


def test_bad_checkpoint_interval_names_the_field():
    with pytest.raises(ConfigError, match="checkpoint_every"):
        with_checkpoints(sweep_preset("lock-in-tail"), 75)  # not a multiple of log_every=50
    with pytest.raises(ConfigError, match="--checkpoint-every"):
        SweepOptions(storage=storage_path("x"), tracking_uri="", checkpoint_every=0).validate()


def test_object_store_storage_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"--storage.*object stores"):
        storage_path("s3://bucket/sweeps")
    assert storage_path("file:///tmp/sweeps").as_posix() == "/tmp/sweeps"


def test_the_optuna_searcher_survives_the_pickling_tune_does():
    """Tune pickles the searcher into tuner.pkl; Optuna 5.1's NSGA-II holds a threading.Lock."""
    import pickle

    import optuna

    from signlock.orchestrator.ray_tune import PicklableNSGAIISampler

    def suggestions(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        values = []
        for _ in range(3):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, [x, 1.0 - x])
            values.append(x)
        return values

    sampler = PicklableNSGAIISampler(seed=3)
    restored = pickle.loads(pickle.dumps(sampler))
    assert suggestions(restored) == suggestions(PicklableNSGAIISampler(seed=3))
