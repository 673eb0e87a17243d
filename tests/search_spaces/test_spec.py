"""SweepSpec: parsing, validation before anything runs, expansion order, round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from signlock.search_spaces.files import load_spec
from signlock.search_spaces.presets import trial_preset
from signlock.search_spaces.spec import AXIS_KINDS, Axis, SweepSpec
from signlock.search_spaces.sweeps import SWEEP_PRESETS, sweep_preset
from signlock.trainables.errors import ConfigError


def valid_spec(**changes: Any) -> dict[str, Any]:
    """A small valid user spec (as parsed from YAML), top-level keys replaced by ``changes``."""
    spec: dict[str, Any] = {
        "name": "t",
        "base": "charlm-lockin",
        "set": {"steps": 100},
        "axes": {
            "init.a_init": {"grid": [0.005, 0.02]},
            "regularizer.lam": {"loguniform": ["1e-4", 0.5]},
        },
        "seeds": [0, 1],
        "num_samples": 2,
    }
    spec.update(changes)
    return spec


def test_valid_user_spec_expands_and_counts():
    spec = SweepSpec.from_dict(valid_spec())
    assert spec.base_preset == "charlm-lockin"
    assert spec.base.steps == 100
    assert [a.key for a in spec.random_axes()] == ["regularizer.lam"]
    assert spec.random_axes()[0].low == pytest.approx(1e-4)
    assert len(spec.grid_overrides()) == 4
    assert spec.n_trials() == 8


def test_expansion_order_first_axis_slowest_seed_innermost_then_points():
    spec = SweepSpec(
        name="order",
        base=trial_preset("charlm"),
        base_preset="charlm",
        axes=(
            Axis("optim.lr", "grid", (1e-4, 1e-3)),
            Axis("data.batch_size", "grid", (8, 16, 32)),
        ),
        seeds=(0, 1),
        points=({"optim.lr": 5e-4, "data.batch_size": 4},),
    )
    overrides = spec.grid_overrides()
    got = [(o["optim.lr"], o["data.batch_size"], o["seed"]) for o in overrides]
    want = [(lr, b, s) for lr in (1e-4, 1e-3) for b in (8, 16, 32) for s in (0, 1)]
    assert got == [*want, (5e-4, 4, 0), (5e-4, 4, 1)]
    assert [o["name"] for o in overrides] == [f"order-{i:04d}" for i in range(14)]
    assert spec.n_trials() == spec.n_grid_points() == 14
    assert overrides == spec.grid_overrides()  # deterministic


def test_no_grid_axis_means_the_base_is_the_single_grid_point():
    spec = SweepSpec(name="b", base=trial_preset("charlm"), base_preset="charlm", seeds=(3,))
    assert spec.grid_overrides() == [{"name": "b-0000", "seed": 3}]
    cfg = spec.trial_config(spec.grid_overrides()[0])
    assert cfg.seed == 3 and cfg.name == "b-0000"


def test_trial_config_applies_overrides_and_preset_key():
    spec = SweepSpec.from_dict(
        {
            "name": "presets",
            "base": "scale-debug",
            "set": {"steps": 7, "data.dataset": "synthetic", "data.synthetic_seq_len": 32},
            "axes": {"preset": {"grid": ["scale-debug", "scale-12.9b"]}},
            "points": [{"preset": "charlm", "model.d_model": 64}],
        }
    )
    configs = [spec.trial_config(o) for o in spec.grid_overrides()]
    assert [c.model.d_model for c in configs] == [64, 4096, 64]
    assert [c.model.n_layers for c in configs] == [2, 64, 2]
    assert {c.steps for c in configs} == {7}  # `set` re-applied to every preset
    assert {c.data.dataset for c in configs} == {"synthetic"}
    assert configs[2].name == "presets-0002" and configs[2].model.dtype == "float32"
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError) as info:
        spec.trial_config({"optim.lr": -1.0})
    assert info.value.field == "optim.lr"


def test_merge_lets_explicit_point_values_win_over_samples():
    spec = SweepSpec.from_dict(valid_spec(points=[{"init.a_init": 0.0, "regularizer.lam": 0.0}]))
    baseline = spec.grid_overrides()[-1]
    merged = spec.merge(baseline, {"regularizer.lam": 0.3})
    assert merged["regularizer.lam"] == 0.0 and merged["name"] == baseline["name"]
    cfg = spec.trial_config(spec.merge(spec.grid_overrides()[0], {"regularizer.lam": 0.3}))
    assert cfg.regularizer.lam == 0.3 and cfg.init.a_init == 0.005


def test_optuna_spec_runs_budget_trials_over_random_axes():
    spec = SweepSpec.from_dict(
        valid_spec(
            axes={
                "init.a_init": {"loguniform": [0.001, 0.03]},
                "regularizer.lam": {"loguniform": ["1e-4", 0.5]},
                "optim.lr": {"choice": ["1e-4", "3e-4"]},
            },
            seeds=[0],
            num_samples=1,
            search="optuna",
            budget=20,
        )
    )
    assert spec.n_trials() == 20
    assert len(spec.grid_overrides()) == 1
    assert [a.kind for a in spec.random_axes()] == ["loguniform", "loguniform", "choice"]
    assert spec.random_axes()[2].values == (1e-4, 3e-4)


YAML_TEXT = """
name: my-sweep
base: charlm-lockin
set: {steps: 500, optim.weight_decay: 1e-2}
axes:
  init.a_init: {grid: [0.005, 0.02]}
  regularizer.lam: {loguniform: [1e-4, 0.5]}
  optim.lr: {choice: [1e-4, 3e-4]}
  schedule.kind: {grid: [constant, cosine]}
seeds: [0, 1, 2]
num_samples: 4
points: [{init.a_init: 0.0, regularizer.lam: 0.0, init.template_rank: null}]
search: grid
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
description: "the example of the module docstring"
"""


def test_yaml_exponent_floats_without_a_dot_are_accepted(tmp_path: Path):
    raw = yaml.safe_load(YAML_TEXT)
    assert raw["axes"]["regularizer.lam"]["loguniform"][0] == "1e-4"  # PyYAML's reading
    path = tmp_path / "spec.yaml"
    path.write_text(YAML_TEXT)
    spec = load_spec(str(path))
    lam, lr = spec.random_axes()
    assert (lam.low, lam.high) == (1e-4, 0.5)
    assert lr.values == (1e-4, 3e-4)
    assert spec.base.optim.weight_decay == 1e-2
    assert spec.axes[3].values == ("constant", "cosine")  # strings of str fields stay strings
    assert spec.n_trials() == (2 * 2 + 1) * 3 * 4
    baseline = spec.trial_config(spec.grid_overrides()[-1])
    assert baseline.init.template_rank is None and baseline.regularizer.lam == 0.0


def test_inline_base_mapping_with_numeric_strings():
    spec = SweepSpec.from_dict(
        {"name": "inline", "base": {"steps": 50, "optim": {"lr": "1e-3"}}, "seeds": [0]}
    )
    assert spec.base.optim.lr == 1e-3 and spec.base_preset is None
    assert SweepSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("name", list(SWEEP_PRESETS))
def test_presets_round_trip_through_yaml_and_json_files(tmp_path: Path, name: str):
    spec = sweep_preset(name)
    data = spec.to_dict()
    assert SweepSpec.from_dict(data) == spec
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "s.json").write_text(json.dumps(data))
    for filename in ("s.yaml", "s.json"):
        loaded = load_spec(str(tmp_path / filename))
        assert loaded == spec
        assert loaded.grid_overrides() == spec.grid_overrides()


def test_load_spec_overrides_set_and_spec_fields():
    spec = load_spec(
        "enhancement",
        {"steps": 100, "spec.seeds": [0], "spec.resources.cpus_per_trial": 2},
    )
    assert spec.base.steps == 100 and spec.n_trials() == 36 and spec.cpus_per_trial == 2
    assert all(spec.trial_config(o).steps == 100 for o in spec.grid_overrides())
    scale = load_spec("scale", {"steps": 10})
    assert {scale.trial_config(o).steps for o in scale.grid_overrides()} == {10}


def test_load_spec_unknown_name_lists_the_presets():
    with pytest.raises(ConfigError) as info:
        load_spec("no-such-sweep")
    assert info.value.field == "spec"
    assert "enhancement" in str(info.value) and "YAML" in str(info.value)


def test_duplicate_keys_in_a_yaml_file_are_an_error(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: dup\nbase: charlm\naxes:\n"
        "  optim.lr: {grid: [1.0e-4]}\n  optim.lr: {grid: [3.0e-4]}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_spec(str(path))
    assert info.value.field == "spec.axes" and "optim.lr" in str(info.value)


def test_duplicate_axis_keys_are_an_error():
    with pytest.raises(ConfigError) as info:
        SweepSpec(
            name="dup",
            base=trial_preset("charlm"),
            base_preset="charlm",
            axes=(Axis("optim.lr", "grid", (1e-4,)), Axis("optim.lr", "choice", (3e-4, 1e-3))),
        )
    assert info.value.field == "spec.axes[1].key"


def test_axis_kinds_constant():
    assert AXIS_KINDS == ("grid", "choice", "uniform", "loguniform")


def _axes(key: str, body: Any) -> dict[str, Any]:
    return {"axes": {key: body}, "num_samples": 1}


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level field", {"colour": "blue"}, "spec.colour"),
    ("missing name", {"name": None}, "spec.name"),
    ("bad name", {"name": "a/b"}, "spec.name"),
    ("unknown base preset", {"base": "nope"}, "spec.base"),
    ("base of wrong type", {"base": 3}, "spec.base"),
    ("invalid inline base", {"base": {"optim": {"lr": -1.0}}}, "optim.lr"),
    ("unknown set key", {"set": {"optim.nope": 1}}, "spec.set"),
    ("set of wrong type", {"set": [1]}, "spec.set"),
    ("set of a swept key", {"set": {"init.a_init": 0.01}}, "spec.set.init.a_init"),
    ("unknown axis key", _axes("init.nope", {"grid": [1]}), "spec.axes[0].key"),
    ("unknown section", _axes("nope.lr", {"grid": [1]}), "spec.axes[0].key"),
    ("reserved axis key", _axes("seed", {"grid": [1, 2]}), "spec.axes[0].key"),
    ("unknown axis kind", _axes("optim.lr", {"normal": [1, 2]}), "spec.axes[0].kind"),
    ("two kinds", _axes("optim.lr", {"grid": [1], "choice": [2]}), "spec.axes[0]"),
    ("axis not a mapping", _axes("optim.lr", [1e-4, 3e-4]), "spec.axes[0]"),
    ("empty grid", _axes("optim.lr", {"grid": []}), "spec.axes[0].values"),
    ("empty choice", {**_axes("optim.lr", {"choice": []})}, "spec.axes[0].values"),
    ("values not a list", _axes("optim.lr", {"grid": 0.1}), "spec.axes[0].values"),
    ("repeated values", _axes("optim.lr", {"grid": [0.1, 0.1]}), "spec.axes[0].values"),
    ("range not a pair", _axes("optim.lr", {"uniform": [0.1]}), "spec.axes[0]"),
    ("low >= high", _axes("optim.lr", {"uniform": [0.1, 0.1]}), "spec.axes[0].low"),
    ("loguniform low 0", _axes("optim.lr", {"loguniform": [0, 0.1]}), "spec.axes[0].low"),
    ("bound not a number", _axes("optim.lr", {"uniform": ["abc", 0.1]}), "spec.axes[0].low"),
    ("unknown preset value", _axes("preset", {"grid": ["scale-1t"]}), "spec.axes[0].values"),
    ("random preset axis", _axes("preset", {"uniform": [0, 1]}), "spec.axes[0].kind"),
    ("seeds not a list", {"seeds": "zero"}, "spec.seeds"),
    ("seeds not ints", {"seeds": [0, 1.5]}, "spec.seeds"),
    ("bool seed", {"seeds": [True]}, "spec.seeds"),
    ("empty seeds", {"seeds": []}, "spec.seeds"),
    ("negative seed", {"seeds": [-1]}, "spec.seeds"),
    ("repeated seeds", {"seeds": [0, 0]}, "spec.seeds"),
    ("num_samples 0", {"num_samples": 0}, "spec.num_samples"),
    ("num_samples str", {"num_samples": "2"}, "spec.num_samples"),
    (
        "num_samples without random axes",
        {"axes": {"init.a_init": {"grid": [0.02]}}, "num_samples": 2},
        "spec.num_samples",
    ),
    ("unknown search", {"search": "random"}, "spec.search"),
    ("budget with grid", {"budget": 5}, "spec.budget"),
    ("cpus 0", {"resources": {"cpus_per_trial": 0}}, "spec.resources.cpus_per_trial"),
    ("gpus < 0", {"resources": {"gpus_per_trial": -1}}, "spec.resources.gpus_per_trial"),
    ("unknown resource", {"resources": {"tpus_per_trial": 1}}, "spec.resources.tpus_per_trial"),
    ("points not a list", {"points": {"optim.lr": 1e-3}}, "spec.points"),
    ("point not a mapping", {"points": [3]}, "spec.points[0]"),
    ("point unknown key", {"points": [{"optim.nope": 1}]}, "spec.points[0]"),
    ("point sets seed", {"points": [{"seed": 4}]}, "spec.points[0]"),
    ("description not str", {"description": 5}, "spec.description"),
    # every grid point / random corner must build a TrialConfig (field of the trial named)
    ("gap beyond the Gaussian mass", _axes("init.a_init", {"grid": [0.02, 0.5]}), "init.a_init"),
    (
        "random corner beyond the gap limit",
        {"axes": {"init.a_init": {"uniform": [0.01, 0.5]}}},
        "init.a_init",
    ),
    (
        "barrier without a gap",
        {"base": "charlm", "axes": {"regularizer.lam": {"grid": [0.1]}}, "num_samples": 1},
        "regularizer.lam",
    ),
    (
        "invalid point",
        {"points": [{"init.a_init": 0.0}], "axes": {}, "num_samples": 1},
        "regularizer.lam",
    ),
    ("wrong value type", _axes("optim.lr", {"grid": ["fast"]}), "optim.lr"),
    ("float for an int field", _axes("data.batch_size", {"uniform": [16, 64]}), "data.batch_size"),
    ("numeric string for an int field", _axes("data.batch_size", {"grid": ["64"]}), "batch_size"),
    ("unknown literal", _axes("schedule.kind", {"choice": ["linear"]}), "schedule.kind"),
]

OPTUNA_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("optuna without budget", {}, "spec.budget"),
    ("optuna budget 0", {"budget": 0}, "spec.budget"),
    (
        "optuna with a grid axis",
        {"budget": 4, "axes": {"init.a_init": {"grid": [0.02]}}},
        "spec.axes[0].kind",
    ),
    ("optuna with points", {"budget": 4, "points": [{"optim.lr": 1e-3}]}, "spec.points"),
    ("optuna with two seeds", {"budget": 4, "seeds": [0, 1]}, "spec.seeds"),
    ("optuna with num_samples", {"budget": 4, "num_samples": 2}, "spec.num_samples"),
    ("optuna without axes", {"budget": 4, "axes": {}}, "spec.axes"),
]


def _optuna(**changes: Any) -> dict[str, Any]:
    base = valid_spec(
        axes={"init.a_init": {"uniform": [0.005, 0.03]}, "regularizer.lam": {"choice": [0.01]}},
        seeds=[0],
        num_samples=1,
        search="optuna",
    )
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("case", "data", "field"),
    [(c, valid_spec(**d), f) for c, d, f in INVALID]
    + [(c, _optuna(**d), f) for c, d, f in OPTUNA_INVALID],
    ids=[c for c, _, _ in INVALID] + [c for c, _, _ in OPTUNA_INVALID],
)
def test_invalid_specs_raise_config_error_naming_the_field(case, data, field):
    if data.get("name", "t") is None:
        del data["name"]
    with pytest.raises(ConfigError) as info:
        SweepSpec.from_dict(data)
    assert field in info.value.field, (case, info.value.field)
    message = str(info.value)
    assert message.startswith("invalid ") and field.split(".")[-1] in message
    assert "\n" not in message


def test_axis_errors_name_the_swept_key():
    data = valid_spec(axes={"regularizer.lam": {"loguniform": [0.5, 0.1]}}, num_samples=1)
    with pytest.raises(ConfigError, match=r"regularizer\.lam"):
        SweepSpec.from_dict(data)


def test_programmatic_specs_are_validated_too():
    with pytest.raises(ConfigError) as info:
        SweepSpec(
            name="bad",
            base=trial_preset("charlm"),
            base_preset="charlm",
            axes=(Axis("optim.lr", "bogus", (1e-3,)),),
        )
    assert info.value.field == "spec.axes[0].kind"
    with pytest.raises(ConfigError) as info:
        SweepSpec(name="bad", base=trial_preset("charlm"), base_preset="nope")
    assert info.value.field == "spec.base_preset"


def test_invalid_point_error_says_which_point():
    data = valid_spec(axes={"init.a_init": {"grid": [0.02, 0.5]}}, num_samples=1)
    with pytest.raises(ConfigError, match=r"sweep point .*0\.5"):
        SweepSpec.from_dict(data)
