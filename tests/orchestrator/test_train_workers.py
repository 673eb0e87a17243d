"""``signlock train --workers-per-trial N``: one trial sharded over N local gloo workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

SIGNLOCK = [sys.executable, "-m", "signlock.orchestrator.cli"]
SMALL = ["--preset", "synthetic-smoke", "--quiet", "--set", "log_every=5"]


def train(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SIGNLOCK, "train", *SMALL, *args],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_two_workers_train_then_resume_on_one_and_refuse_another_config(tmp_path):
    run_dir = tmp_path / "signlock-runs" / "synthetic-smoke"
    first = train(
        tmp_path, "--steps", "10", "--set", "checkpoint_every=5", "--workers-per-trial", "2"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["steps"] == 10 and summary["device"] == "cpu x2"
    assert pd.read_parquet(run_dir / "metrics.parquet")["step"].tolist() == [5, 10]

    again = train(tmp_path, "--steps", "10", "--set", "checkpoint_every=5")  # 1 worker
    assert again.returncode == 0, again.stderr[-3000:]
    assert "from step 10 on 1 workers" in again.stderr
    assert json.loads(again.stdout)["device"] == "cpu x1"

    changed = train(
        tmp_path, "--steps", "10", "--set", "checkpoint_every=5", "--set", "optim.lr=0.1"
    )
    assert changed.returncode == 2
    assert changed.stderr.strip().startswith("signlock: error: invalid config=")
    assert "optim.lr" in changed.stderr and "Traceback" not in changed.stderr


def test_a_batch_the_workers_cannot_split_is_refused_before_any_worker_starts(tmp_path):
    result = train(tmp_path, "--steps", "10", "--workers-per-trial", "3")  # batch 64
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "signlock: error: invalid data.batch_size=64: a multiple of workers_per_trial=3 "
        "(each worker takes a slice)"
    ]
    assert not (tmp_path / "signlock-runs").exists()
