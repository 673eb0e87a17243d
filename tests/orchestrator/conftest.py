"""Fixtures for sweep tests: the real ``signlock`` CLI in subprocesses, real Ray, real MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

SIGNLOCK = [sys.executable, "-m", "signlock.orchestrator.cli"]

# Four tiny trials on the offline synthetic corpus: 2 gap thresholds × 2 seeds, 40 steps each,
# a checkpoint every 20 steps.
TINY_SET = {
    "steps": 40,
    "log_every": 10,
    "eval_every": 20,
    "checkpoint_every": 20,
    "model.d_model": 32,
    "model.d_ff": 64,
    "model.n_heads": 2,
    "data.eval_batches": 2,
    "data.synthetic_sequences": 256,
    "data.batch_size": 16,
}


def make_tiny_spec(name: str = "tiny", **changes: object) -> dict:
    spec = {
        "name": name,
        "base": "synthetic-smoke",
        "set": dict(TINY_SET),
        "axes": {"init.a_init": {"grid": [0.005, 0.02]}},
        "seeds": [0, 1],
        "resources": {"cpus_per_trial": 1},
    }
    spec.update(changes)
    return spec


@pytest.fixture
def tiny_spec() -> Callable[..., dict]:
    """``tiny_spec(**changes)``: the four-trial spec as a dict, top-level keys replaced."""
    return make_tiny_spec


@pytest.fixture
def signlock_command() -> list[str]:
    return list(SIGNLOCK)


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    def write(spec: dict, filename: str = "spec.yaml") -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def sweep_root(tmp_path: Path) -> Path:
    root = tmp_path / "sweeps"
    return root


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``signlock ARGS`` in ``tmp_path`` to completion."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*SIGNLOCK, *args],
            cwd=tmp_path,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
