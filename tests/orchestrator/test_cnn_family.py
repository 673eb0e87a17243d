"""The CNN family end to end through the real CLI: its smoke sweep on a real local Ray and a
real MLflow store, then ``signlock status`` and ``signlock analyze`` on it (classification
error as the objective, Conv kernels among the tracked tensors)."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.orchestrator.test_cli import run_cli
from tests.orchestrator.test_sweep import flips_dataset, sweep_runs

SWEEP = "vision-cnn-lock-in-tail-smoke"
TENSORS = {"convs.0.weight", "convs.1.weight", "head.weight", "__pooled__"}


@pytest.mark.slow
def test_cnn_smoke_sweep_then_status_and_analyze(tmp_path):
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = run_cli("sweep", SWEEP, "--storage", str(storage), "--tracking-uri", uri, "--quiet",
                    cwd=tmp_path)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    sweep_dir = storage / SWEEP
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    assert trials["val_error"].between(0, 1).all() and trials["val_ppl"].isna().all()

    flips = flips_dataset(storage, SWEEP)
    assert flips.groupby("trial")["tensor"].agg(set).tolist() == [TENSORS, TENSORS]
    (parent,), children = sweep_runs(uri, SWEEP)
    assert len(children) == 2 and parent.info.status == "FINISHED"
    for child in children:
        assert child.data.params["model.kind"] == "cnn" and "model.channels" in child.data.params
        assert "model.d_model" not in child.data.params and "val_error" in child.data.metrics

    status = run_cli("status", SWEEP, "--storage", str(storage), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "terminated 2" in status.stdout and "val_error=" in status.stdout

    analyze = run_cli("analyze", SWEEP, "--storage", str(storage), cwd=tmp_path)
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    lockin = pd.read_csv(sweep_dir / "analysis" / "lockin.csv")
    assert set(lockin["tensor"]) == TENSORS and lockin["h_hat"].between(0, 1).all()
    pareto = pd.read_csv(sweep_dir / "analysis" / "pareto.csv")
    assert {"val_error", "flip_mean"} <= set(pareto.columns) and len(pareto) >= 1
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/lockin.csv", "analysis/pareto.csv", "analysis/tail.png"} <= logged
