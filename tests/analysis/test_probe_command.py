"""`signlock probe` end to end: a real compression-smoke sweep probed as a sweep (a run nested
under its parent run), plus a state_dict file and a safetensors model directory (experiment
signlock-probes); outputs read back with MLflow's own client."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from tests.orchestrator.test_cli import run_cli
from tests.orchestrator.test_sweep import sweep_runs
from tests.orchestrator.test_user_errors import one_line_error

OUTPUTS = {"svd_error.csv", "ks.json", "entropy.json", "codecs.csv", "svd_error.png",
           "ks_cdf.png", "codecs.png"}  # fmt: skip


@pytest.fixture(scope="module")
def compression_smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("compression")
    result = run_cli("sweep", "compression-smoke", "--quiet", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_probe_of_a_sweep_nests_under_its_parent_run(compression_smoke):
    root = compression_smoke
    result = run_cli("probe", "compression-smoke", "--no-references", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "signlock-runs" / "probes" / "compression-smoke"
    assert {p.name for p in out.iterdir()} == OUTPUTS
    uri = f"sqlite:///{root / 'signlock-runs' / 'mlflow.db'}"
    (parent,), _ = sweep_runs(uri, "compression-smoke")
    client = MlflowClient(uri)
    probe_runs = client.search_runs([parent.info.experiment_id], "tags.`signlock.kind` = 'probe'")
    assert len(probe_runs) == 1
    probe_run = probe_runs[0]
    assert probe_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    logged = {
        a.path.removeprefix("probe/") for a in client.list_artifacts(probe_run.info.run_id, "probe")
    }
    assert logged == OUTPUTS

    svd = pd.read_csv(out / "svd_error.csv")
    sources = set(svd.source)
    assert len(sources) == 6 and {s.rsplit("/", 1)[1] for s in sources} == {"initial", "final"}
    assert not svd.matrix.str.contains("emb|head").any()  # C.3.2's exclusions (tok_emb, head)
    means = svd[svd.matrix == "__mean__"]
    assert (means.E_r_S.between(0, 1)).all() and len(means) == 6 * 11
    entropy = json.loads((out / "entropy.json").read_text())
    assert all(0 < v["H_RD"] <= 1 for v in entropy.values())
    metrics = probe_run.data.metrics
    assert any(key.endswith(".ks_D") for key in metrics)


@pytest.mark.slow
def test_probe_of_files_goes_to_the_probe_experiment(tmp_path):
    torch.save({"model": {"layer.weight": torch.randn(300, 200)}}, tmp_path / "ckpt.pt")
    shards = tmp_path / "hf-model"
    shards.mkdir()
    save_file({"mlp.fc.weight": torch.randn(96, 128)}, shards / "model-00001-of-00002.safetensors")
    save_file(
        {"mlp.proj.weight": torch.randn(128, 96)}, shards / "model-00002-of-00002.safetensors"
    )
    result = run_cli("probe", "ckpt.pt", "hf-model", "--name", "files", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    codecs = pd.read_csv(tmp_path / "signlock-runs" / "probes" / "files" / "codecs.csv")
    assert set(codecs.source) == {"ckpt", "hf-model", "reference"}
    pooled = codecs[(codecs.source == "hf-model") & (codecs.matrix == "__pooled__")]
    assert set(pooled.codec) >= {"bz2(9)", "lzma(p6)", "zlib(9)", "raw_deflate(9)", "gzip(9)"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'signlock-runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("signlock-probes")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "files" and run.info.status == "FINISHED"


def test_probe_of_nothing_probeable_is_one_line_and_exit_2(tmp_path):
    result = run_cli("probe", "no-such-sweep", cwd=tmp_path)
    assert result.returncode == 2
    assert "PATH" in one_line_error(result)
    assert not (tmp_path / "signlock-runs").exists()
    bad = run_cli("probe", "x", "--top-ks", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--top-ks" in one_line_error(bad)
