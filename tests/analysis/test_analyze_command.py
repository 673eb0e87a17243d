"""`signlock analyze` end to end: a real sweep, then its tables and figures as artifacts and
metrics of the sweep's MLflow parent run (read with MLflow's own client)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signlock.analysis import load_sweep, lockin_table
from tests.orchestrator.test_cli import run_cli
from tests.orchestrator.test_sweep import sweep_runs

FIGURES = {"tail.png", "k_histograms.png", "flips_over_time.png", "pareto.png",
           "hg_vs_init_a_init.png", "hg_vs_regularizer_lam.png"}  # fmt: skip
TABLES = {
    f"{stem}.{suffix}" for stem in ("lockin", "seeds", "pareto") for suffix in ("csv", "parquet")
}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    result = run_cli("sweep", "enhancement-smoke", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_analyze_logs_tables_and_figures_on_the_parent_run(finished_sweep):
    root = finished_sweep
    first = run_cli("analyze", "enhancement-smoke", cwd=root)
    assert first.returncode == 0, first.stderr
    again = run_cli("analyze", "enhancement-smoke", cwd=root)  # replaces, never duplicates
    assert again.returncode == 0, again.stderr
    uri = f"sqlite:///{root / 'signlock-runs' / 'mlflow.db'}"
    (parent,), _ = sweep_runs(uri, "enhancement-smoke")
    client = MlflowClient(uri)
    logged = {
        a.path.removeprefix("analysis/")
        for a in client.list_artifacts(parent.info.run_id, "analysis")
    }
    assert (FIGURES | TABLES) - logged == set()
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["analysis.trials"] == 3 and metrics["analysis.trials_missing"] == 0
    assert len(client.get_metric_history(parent.info.run_id, "analysis.h_hat_mean")) == 1

    sweep_dir = root / "signlock-runs" / "sweeps" / "enhancement-smoke"
    lockin = pd.read_csv(sweep_dir / "analysis" / "lockin.csv")
    pooled = lockin[lockin["tensor"] == "__pooled__"].set_index("trial")
    trials = pd.read_csv(sweep_dir / "trials.csv").set_index("name")
    pd.testing.assert_series_equal(pooled["h_hat"], trials.loc[pooled.index, "h_hat"],
                                   check_names=False)  # fmt: skip
    assert (pooled["h_low"] <= pooled["h_hat"]).all() and (
        pooled["h_hat"] <= pooled["h_high"]
    ).all()
    assert (sweep_dir / "analysis" / "tail.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_analyze_a_partly_finished_sweep_says_how_many_are_missing(finished_sweep, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(finished_sweep / "signlock-runs" / "sweeps" / "enhancement-smoke", copy)
    shutil.rmtree(copy / "summaries" / "trial=enhancement-smoke-0002")
    sweep = load_sweep(copy)
    assert sweep.n_missing == 1 and len(sweep.trials) == 2
    assert set(lockin_table(sweep, per_tensor=False)["trial"]) == set(sweep.trials["name"])
    result = run_cli("analyze", str(copy), cwd=finished_sweep)
    assert result.returncode == 0, result.stderr
    assert "1 of 3 trials have not finished" in result.stderr


def test_a_bad_metric_names_the_flag_and_lists_the_allowed(finished_sweep, cli_in_process):
    result = cli_in_process("analyze", "enhancement-smoke", "--y", "accuracy", cwd=finished_sweep)
    assert result.returncode == 2 and "--y" in result.stderr and "val_ppl" in result.stderr


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--virtual-time-budget=10000",
]  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium is not installed (.ci/run installs it)"
    return found


@pytest.mark.slow
def test_the_report_renders_every_figure_in_a_real_browser(finished_sweep, tmp_path):
    root = finished_sweep
    result = run_cli("report", "enhancement-smoke", cwd=root)
    assert result.returncode == 0, result.stderr
    report = Path(result.stdout.strip().splitlines()[-1])
    figures = len(list(report.parent.glob("*.png")))
    dom = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "<h1>signlock sweep enhancement-smoke</h1>" in dom
    assert f"{figures}/{figures} figures rendered" in dom and figures >= 6
    assert "http" not in dom.split("<h2>Figures</h2>")[1].split("<h2>Spec</h2>")[0]  # embedded

    uri = f"sqlite:///{root / 'signlock-runs' / 'mlflow.db'}"
    (parent,), children = sweep_runs(uri, "enhancement-smoke")
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "analysis")}
    assert "analysis/report.html" in logged
    for child in children:  # each trial links to its own MLflow run
        assert f"/runs/{child.info.run_id}" in dom


def test_block_metrics_stream_to_the_weighted_means_of_a_direct_computation(finished_sweep):
    from signlock.analysis.sweep_data import block_metrics, block_of

    assert [block_of(n) for n in ("blocks.11.attn.q.weight", "tok_emb.weight", "lm_head.weight",
                                  "layers.0.weight", "other")] == [
        "block 11", "embedding", "head", "layer 0", "other"]  # fmt: skip
    sweep_dir = finished_sweep / "signlock-runs" / "sweeps" / "enhancement-smoke"
    rows = pd.concat(
        pd.read_parquet(path).assign(trial=path.parent.name)
        for path in (sweep_dir / "tensor_metrics").glob("trial=*/part-0.parquet")
    )
    rows["block"] = rows["tensor"].map(block_of)
    rows["w"] = rows["n_tracked"].astype(float)
    expected = rows.assign(flip=rows["flip_vs_init"] * rows["w"]).groupby(["step", "block"])
    expected = (expected["flip"].sum() / expected["w"].sum()).rename("flip_vs_init")
    got = block_metrics(sweep_dir).set_index(["step", "block"])["flip_vs_init"]
    blocks = got[got.index.get_level_values("block") != "__pooled__"]
    pd.testing.assert_series_equal(blocks.sort_index(), expected.sort_index(), check_names=False)
    pooled = got.xs("__pooled__", level="block")  # every trial tracks the same scalars
    metrics = load_sweep(sweep_dir).metrics(("flip_vs_init",)).groupby("step")["flip_vs_init"]
    pd.testing.assert_series_equal(pooled, metrics.mean(), check_names=False)


def test_per_tensor_intervals_on_request(finished_sweep):
    sweep = load_sweep(finished_sweep / "signlock-runs" / "sweeps" / "enhancement-smoke")
    table = lockin_table(sweep, resamples=200, per_tensor_ci=True)
    tensors = table[table["tensor"] != "__pooled__"]
    assert len(tensors) > 3 * 5 and tensors["h_low"].notna().all()
    assert ((tensors["h_low"] <= tensors["h_hat"]) & (tensors["h_hat"] <= tensors["h_high"])).all()
