"""Trial families: one registry answers which kind of trial a config is; each family's model
config has only its own fields; run directories written by the flat model record still load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from signlock.search_spaces.presets import TRIAL_PRESETS, trial_preset
from signlock.search_spaces.spec import SweepSpec
from signlock.search_spaces.sweeps import SWEEP_PRESETS, sweep_preset
from signlock.trainables.config import (
    LEGACY_FLAT_MODEL,
    ModelConfig,
    TrialConfig,
    coerce_field,
    config_differences,
    field_hint,
)
from signlock.trainables.errors import ConfigError
from signlock.trainables.families import FAMILIES, REGISTERED, dataset_names, family_of
from signlock.trainables.families.cnn import CNNConfig
from signlock.trainables.families.gpt import GPTConfig
from signlock.trainables.families.mlp import MLPConfig
from signlock.trainables.files import load_torch_file
from signlock.trainables.schema import OBJECTIVE_METRICS, validation_objective
from signlock.trainables.trainer import Trial, load_run_config, run_trial

LEGACY_RUNS = Path(__file__).parent / "legacy_runs"  # config.json of the flat ModelConfig
EXPECTED_KIND = {"vision-mlp": "mlp", "vision-mlp-smoke": "mlp", "vision-cnn": "cnn"}
EXPECTED_KIND["vision-cnn-smoke"] = "cnn"


def kind_of_preset(name: str) -> str:
    return EXPECTED_KIND.get(name, "gpt")


@pytest.mark.parametrize("name", list(TRIAL_PRESETS))
def test_family_of_every_trial_preset(name):
    cfg = trial_preset(name)
    family = family_of(cfg)
    assert family is family_of(cfg.model) is FAMILIES[kind_of_preset(name)]
    assert type(cfg.model) is family.config_class
    assert cfg.data.dataset in family.datasets
    assert validation_objective(cfg) == family.validation_metric
    again = TrialConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_json() == cfg.to_json()


@pytest.mark.parametrize("name", list(SWEEP_PRESETS))
def test_family_of_every_trial_of_every_sweep_preset(name):
    spec = sweep_preset(name)
    for overrides in spec.grid_overrides():
        cfg = spec.trial_config(overrides)
        assert family_of(cfg) is FAMILIES[cfg.model.kind]
        assert isinstance(cfg.model, family_of(cfg).config_class)


def test_the_registry_is_consistent():
    assert [family.name for family in REGISTERED] == list(FAMILIES) == ["gpt", "mlp", "cnn"]
    for family in REGISTERED:
        assert family.validation_metric in OBJECTIVE_METRICS
        assert family.unit in ("tokens", "samples") and family.datasets
        assert family.config_class().kind == family.name
    assert set(dataset_names()) == {
        "tinyshakespeare", "text8", "synthetic", "text-file", "mnist", "synthetic-images",
    }  # fmt: skip


def test_model_config_builds_the_family_of_its_kind():
    assert type(ModelConfig()) is GPTConfig  # TinyCharLM (C.4.1)
    assert type(ModelConfig(kind="mlp", hidden_sizes=[8])) is MLPConfig
    assert type(ModelConfig(kind="cnn")) is CNNConfig
    assert not hasattr(MLPConfig(), "n_heads") and not hasattr(GPTConfig(), "hidden_sizes")
    with pytest.raises(ConfigError, match=r"model\.kind"):
        ModelConfig(kind="rnn")
    with pytest.raises(ConfigError, match=r"model\.kind"):
        GPTConfig(kind="mlp")  # type: ignore[arg-type]


def test_an_mlp_no_longer_checks_gpt_fields():
    """The flat record checked d_model % n_heads even for the MLP."""
    cfg = TrialConfig.from_dict({"model": {"kind": "mlp"}, "data": {"dataset": "mnist"}})
    assert cfg.model == MLPConfig()
    assert set(cfg.to_dict()["model"]) == {
        "kind", "sigma_init", "dtype", "gradient_checkpointing", "hidden_sizes",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "dotted", "value"),
    [
        ("vision-mlp-smoke", "model.n_heads", 2),
        ("vision-mlp-smoke", "model.d_model", 64),
        ("synthetic-smoke", "model.hidden_sizes", [8]),
        ("vision-cnn-smoke", "model.context_length", 16),
    ],
)
def test_a_field_the_family_lacks_is_one_config_error(preset, dotted, value):
    field_hint(dotted)  # a field of some family: accepted as a key
    with pytest.raises(ConfigError) as caught:
        trial_preset(preset).with_overrides({dotted: coerce_field(dotted, value)})
    error = caught.value
    kind = trial_preset(preset).model.kind
    assert (error.field, error.value) == (dotted, value)
    assert f"model.kind={kind!r}" in error.allowed and "sigma_init" in error.allowed
    assert "\n" not in str(error)


def test_a_sweep_axis_outside_the_family_names_the_field():
    raw = {"name": "bad", "base": "vision-mlp", "axes": {"model.d_model": {"grid": [32, 64]}}}
    with pytest.raises(ConfigError) as caught:
        SweepSpec.from_dict(raw)
    assert caught.value.field == "model.d_model" and "hidden_sizes" in caught.value.allowed


def test_the_cli_refuses_a_field_of_another_family_in_one_line(tmp_path):
    command = [sys.executable, "-m", "signlock.orchestrator.cli", "train", "--preset",
               "vision-cnn-smoke", "--set", "model.n_heads=2"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.n_heads=2" in lines[0] and "channels" in lines[0]


def test_changing_model_kind_starts_from_the_new_familys_defaults():
    mlp = trial_preset("vision-mlp").with_overrides({"model.sigma_init": 0.05})
    gpt = mlp.with_overrides(
        {"data.dataset": "synthetic", "model.d_model": 32, "model.kind": "gpt"}
    )
    assert gpt.model == GPTConfig(d_model=32, sigma_init=0.05)


# ---------------------------------------------------------------------------- old run dirs


@pytest.mark.parametrize(
    ("kind", "preset"), [("gpt", "synthetic-smoke"), ("mlp", "vision-mlp-smoke")]
)
def test_a_legacy_run_directory_loads_into_its_family(kind, preset):
    run_dir = LEGACY_RUNS / kind
    raw = json.loads((run_dir / "config.json").read_text())
    assert raw["model"].keys() == LEGACY_FLAT_MODEL.keys()  # the flat record, as it was written
    cfg = load_run_config(run_dir)
    assert type(cfg.model) is FAMILIES[kind].config_class
    assert cfg == trial_preset(preset)
    assert config_differences(raw, cfg.to_dict()) == []  # its checkpoints resume


def test_a_legacy_field_off_its_old_default_is_refused_in_one_line():
    raw = json.loads((LEGACY_RUNS / "mlp" / "config.json").read_text())
    raw["model"]["n_heads"] = 8  # configured nothing the MLP has
    with pytest.raises(ConfigError) as caught:
        TrialConfig.from_dict(raw)
    assert (caught.value.field, caught.value.value) == ("model.n_heads", 8)
    assert "old default" in caught.value.allowed and "\n" not in str(caught.value)
    raw["model"]["n_heads"] = 4
    raw["model"]["hidden_sizes"] = [32]  # a field the MLP has keeps its value
    assert TrialConfig.from_dict(raw).model == MLPConfig(hidden_sizes=[32])


def test_a_checkpoint_written_with_the_flat_record_resumes(tmp_path):
    cfg = load_run_config(LEGACY_RUNS / "gpt").with_overrides(
        {"steps": 4, "log_every": 2, "eval_every": 2, "checkpoint_every": 2, "threads": 1,
         "data.synthetic_sequences": 64}
    )  # fmt: skip
    run_dir = tmp_path / "run"
    run_trial(cfg, run_dir, progress=False)
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    state = load_torch_file(checkpoint, map_location="cpu")
    state["config"]["model"] = {**LEGACY_FLAT_MODEL, **state["config"]["model"]}
    torch.save(state, checkpoint)
    restored = Trial(cfg, run_dir, progress=False).restore()
    assert restored is not None and restored.step == 4
