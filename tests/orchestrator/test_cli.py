"""The ``signlock`` console script, run as a real subprocess (``run_cli``); inputs refused
before any work are checked in-process (``cli_in_process``, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

SIGNLOCK = [sys.executable, "-m", "signlock.orchestrator.cli"]


def run_cli(
    *args: str, cwd, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [*SIGNLOCK, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_charlm_smoke_preset_writes_all_outputs(tmp_path, seeded_cache):
    result = run_cli(
        "train",
        "--preset",
        "charlm-smoke",
        "--quiet",
        cwd=tmp_path,
        env_extra={"SIGNLOCK_CACHE": str(seeded_cache)},
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "signlock-runs" / "charlm-smoke"
    summary = json.loads(result.stdout)
    assert summary == json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 300 and summary["n_tracked"] > 300_000
    assert 1.0 < summary["val_ppl"] < 65.0  # better than a uniform guess over 65 characters
    for name in (
        "config.json",
        "metrics.parquet",
        "flips.parquet",
        "tensor_stats.parquet",
        "checkpoints/latest.pt",
    ):
        assert (run_dir / name).is_file(), name
    assert len(pd.read_parquet(run_dir / "metrics.parquet")) == 12


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--preset", "charlm-smoke", "--set", "regularizer.lam=-0.1"], "regularizer.lam"),
        (["--preset", "charlm-smoke", "--set", "tracker.rho=1e-5"], "Definition 3.1 needs ε < ρ"),
        (["--preset", "charlm-smoke", "--set", "init.template_rank=0"], "init.template_rank"),
        (["--preset", "charlm-smoke", "--set", "init.a_init=0.5"], "init.a_init"),
        (["--preset", "charlm-smoke", "--set", "optim.lrr=1"], "optim.lrr"),
        (["--preset", "no-such-preset"], "preset"),
        (["--preset", "charlm-smoke", "--set", "steps"], "--set"),
        (["--preset", "charlm-smoke", "--set", "init.targets=[a, b"], "--set"),
        (["--config", "missing.yaml"], "not found: missing.yaml"),
        (
            ["--preset", "synthetic-smoke", "--set", "data.synthetic_seq_len=999"],
            "data.synthetic_seq_len",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_field(tmp_path, cli_in_process, args, field):
    result = cli_in_process("train", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signlock: error: ")
    assert field in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "signlock-runs").exists()


TRIAL_YAML = (
    "name: yaml-trial\nsteps: 3000\nlog_every: 50\ncheckpoint_every: 100\nthreads: 1\n"
    "model: {d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, context_length: 16}\n"
    "data: {dataset: synthetic, batch_size: 2, eval_batches: 1, synthetic_sequences: 32,"
    " synthetic_seq_len: 16}\n"
)


def kill_after_a_checkpoint(args: list[str], cwd, checkpoint_json) -> int:
    """Start ``signlock train``, SIGKILL it once a checkpoint exists; the checkpoint's step."""
    process = subprocess.Popen([*SIGNLOCK, *args], cwd=cwd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint_json.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.wait()
    return json.loads(checkpoint_json.read_text())["step"]


def test_yaml_config_file_resumes_from_the_step_it_was_killed_at(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text(TRIAL_YAML)
    args = ["train", "--config", str(config), "--quiet", "--run-dir"]
    straight = run_cli(*args, "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    killed_at = kill_after_a_checkpoint(
        [*args, "resumed"], tmp_path, tmp_path / "resumed" / "checkpoints" / "latest.json"
    )
    assert 0 < killed_at < 3000, "the first run must be interrupted before it finishes"
    resumed = run_cli(*args, "resumed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming resumed from step {killed_at}" in resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == 3000
    columns = ["step", "train_loss", "val_loss", "flip_vs_init", "flip_mean", "step_flip_rate"]
    expected = pd.read_parquet(tmp_path / "straight" / "metrics.parquet")[columns]
    got = pd.read_parquet(tmp_path / "resumed" / "metrics.parquet")[columns]
    pd.testing.assert_frame_equal(expected, got)
    flips = [pd.read_parquet(tmp_path / d / "flips.parquet") for d in ("straight", "resumed")]
    pd.testing.assert_frame_equal(*flips)


def test_presets_are_listed(cli_in_process):
    result = cli_in_process("presets")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"charlm-smoke", "synthetic-smoke", "scale-12.9b", "vision-mlp"} <= set(names)
