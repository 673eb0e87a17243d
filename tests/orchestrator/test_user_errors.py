"""Regression tests of the hardening issue: each user mistake is one line naming what is wrong,
exit 2 before any work, and nothing already computed is changed (the CLI in real subprocesses,
or called in-process with ``cli_in_process`` where it is refused before any work)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from signlock.orchestrator.commands.presets import preset_summary
from signlock.search_spaces.presets import TRIAL_PRESETS
from signlock.search_spaces.sweeps import SWEEP_PRESETS
from tests.orchestrator.test_cli import SIGNLOCK, run_cli

TINY = ["--set", "steps=4", "--set", "log_every=2", "--set", "eval_every=null"]
TINY += ["--set", "checkpoint_every=null", "--quiet"]


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signlock: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_exponent_floats_in_set_are_numbers(tmp_path):
    result = run_cli(
        "train", "--preset", "synthetic-smoke", *TINY, "--set", "optim.lr=1e-3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "signlock-runs/synthetic-smoke/config.json").read_text())
    assert config["optim"]["lr"] == 1e-3


def test_a_refused_resume_leaves_the_run_directory_as_it_was(tmp_path):
    first = run_cli("train", "--preset", "synthetic-smoke", *TINY, "--run-dir", "R", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "R").iterdir() if p.is_file()}
    changed = run_cli(
        "train", "--preset", "synthetic-smoke", *TINY, "--run-dir", "R",
        "--set", "optim.lr=0.002", cwd=tmp_path,
    )  # fmt: skip
    assert changed.returncode == 2
    assert "optim.lr: 0.0003 -> 0.002" in one_line_error(changed)
    after = {p.name: p.read_bytes() for p in (tmp_path / "R").iterdir() if p.is_file()}
    assert after == before


def test_a_malformed_trial_config_file_is_one_line(tmp_path, cli_in_process):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    result = cli_in_process("train", "--config", "bad.yaml")
    assert result.returncode == 2
    assert "bad.yaml" in one_line_error(result) and "valid YAML/JSON" in result.stderr


def test_a_missing_spec_file_says_not_found(cli_in_process):
    result = cli_in_process("plan", "sweeps/missing.yaml")
    assert result.returncode == 2
    assert one_line_error(result) == "signlock: error: not found: sweeps/missing.yaml"


def test_a_diverged_run_exits_with_1_not_the_usage_status(tmp_path):
    result = run_cli(
        "train", "--preset", "synthetic-smoke", *TINY, "--set", "optim.lr=1e30", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "training loss became nan" in one_line_error(result)


def test_query_never_creates_a_store_and_parses_the_filter_first(tmp_path, cli_in_process):
    garbage = cli_in_process("query", "--filter", "garbage(((")
    assert garbage.returncode == 2 and "--filter" in one_line_error(garbage)
    missing = cli_in_process("query")
    assert missing.returncode == 2
    assert "no MLflow store at" in one_line_error(missing)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_mlflow_filter_is_one_line(tmp_path, cli_in_process):
    store = f"sqlite:///{tmp_path / 'm.db'}"
    from mlflow.tracking import MlflowClient

    MlflowClient(store).create_experiment("signlock")
    result = cli_in_process("query", "--tracking-uri", store, "--mlflow-filter", "params.x >>> 1")
    assert result.returncode == 2
    assert "--mlflow-filter" in one_line_error(result)


@pytest.mark.parametrize("name", [*TRIAL_PRESETS, *SWEEP_PRESETS])
def test_every_preset_has_a_whole_one_line_summary(name):
    factory = {**TRIAL_PRESETS, **SWEEP_PRESETS}[name]
    summary = preset_summary(factory)
    assert len(summary) > 15 and summary.endswith(".") and "\n" not in summary
    assert summary.count("(") == summary.count(")")  # not cut inside a parenthesis


def test_plan_and_spec_drop_a_point_that_repeats_a_grid_point(tmp_path, cli_in_process):
    (tmp_path / "s.yaml").write_text(
        "name: dup\nbase: synthetic-smoke\n"
        "axes: {init.a_init: {grid: [0.0, 0.01]}}\n"
        "points: [{init.a_init: 0.0}, {init.a_init: 0.02}]\n"
    )
    result = cli_in_process("plan", "s.yaml")
    assert result.returncode == 0, result.stderr
    assert "sweep dup: 3 trials" in result.stdout
    assert "duplicates dropped: 1" in result.stdout


def test_a_closed_pipe_ends_the_listing_without_a_traceback(tmp_path):
    result = subprocess.run(
        f"{shlex.join(SIGNLOCK)} presets | head -n 1", shell=True, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.startswith("trial presets") and "Traceback" not in result.stderr
