"""A default sweep starts its own Ray: a foreign `ray start --head` on the machine (every shared
login node has one) neither captures nor stalls it. The foreign head offers 0 CPUs, so a sweep
that attached to it could never schedule a trial and would time out. The same run checks the
terminal shows signlock's output only (Tune's snapshot warning is not even in ray.log), and the
experiment is a model-training one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.test_cli import SIGNLOCK

TERMINAL_NOISE = (
    "snapshotting", "TensorBoard", "Configuration for experiment", "Trial status",
    "Creating initial MLflow database tables",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def foreign_ray_head():
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray = shutil.which("ray", path=str(Path(SIGNLOCK[0]).parent))
    assert ray is not None
    port = free_port()
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert head.poll() is None, "ray start --head exited"
        time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    head.terminate()  # --block: the CLI stops the daemons it started; never `ray stop`
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_default_sweep_is_not_captured_by_a_foreign_cluster(tmp_path, foreign_ray_head):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [*SIGNLOCK, "sweep", "enhancement-smoke"],  # 10 checkpoints per trial within seconds
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    terminal = result.stdout + result.stderr
    assert not [noise for noise in TERMINAL_NOISE if noise in terminal], terminal
    sweep_dir = tmp_path / "signlock-runs" / "sweeps" / "enhancement-smoke"
    ray_log = (sweep_dir / "ray.log").read_text()
    assert "Configuration for experiment" in ray_log
    assert "snapshotting" not in ray_log  # the cause is gone: Tune holds no trial checkpoints
    client = MlflowClient(f"sqlite:///{tmp_path / 'signlock-runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("signlock")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
