"""`signlock probe` end to end: a real compression-smoke sweep probed as a sweep (a run nested
under its parent run), plus a state_dict file and a safetensors model directory (experiment
signlock-probes); outputs read back with MLflow's own client."""

from __future__ import annotations

import json
from fractions import Fraction

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


def test_probe_of_nothing_probeable_is_one_line_and_exit_2(tmp_path, cli_in_process):
    result = cli_in_process("probe", "no-such-sweep")
    assert result.returncode == 2
    assert "PATH" in one_line_error(result)
    assert not (tmp_path / "signlock-runs").exists()
    bad = cli_in_process("probe", "x", "--top-ks", "0")
    assert bad.returncode == 2 and "--top-ks" in one_line_error(bad)


BUDGETS = (0.25, 0.5, 1.0, 2.0)


@pytest.mark.slow
def test_compress_curves_logged_on_the_parent_run_and_resumed(compression_smoke):
    root = compression_smoke
    bpw = ",".join(map(str, BUDGETS))
    result = run_cli("compress", "compression-smoke", "--bpw", bpw, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "signlock-runs" / "sweeps" / "compression-smoke" / "compression"
    table = pd.read_parquet(out / "compression.parquet")
    assert len(table) == 3 * (7 * len(BUDGETS) + 1)  # every trial, method, budget + uncompressed
    reached = table[(table.status == "ok") & (table.method != "uncompressed")]
    for row in reached.itertuples():
        bits = row.sign_bits + row.value_bits + row.index_bits
        assert Fraction(int(bits), int(row.weights)) <= Fraction(str(row.bpw_target))
    unreached = table[table.status != "ok"]
    assert unreached.metric.isna().all() and (unreached.status.str.len() > 0).all()
    assert {"svd-lockin-zscore", "svd-w", "hashednets"} <= set(reached.method)

    # E.3.4: with template-locked signs, SVD |W| beats SVD W below one bit per weight.
    sub_bit = reached[reached.bpw_eff < 1].groupby("method").metric.mean()
    best_lockin = min(sub_bit["svd-lockin-zscore"], sub_bit["svd-lockin-naive"])
    assert best_lockin < sub_bit["svd-w"], sub_bit.to_dict()

    uri = f"sqlite:///{root / 'signlock-runs' / 'mlflow.db'}"
    (parent,), _ = sweep_runs(uri, "compression-smoke")
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "compression")}
    assert logged == {"compression/compression.parquet", "compression/compression.png"}

    kept = table.drop(index=table.index[table.method == "wanda"][:2])  # as if interrupted
    kept.to_parquet(out / "compression.parquet", index=False)
    again = run_cli("compress", "compression-smoke", "--bpw", bpw, cwd=root)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = pd.read_parquet(out / "compression.parquet")
    pd.testing.assert_frame_equal(resumed, table)  # the missing rows back, nothing else redone


def test_compress_refuses_bad_methods_and_budgets_before_any_work(tmp_path, cli_in_process):
    bad = cli_in_process("compress", "any", "--methods", "svd-w,jpeg")
    assert bad.returncode == 2 and "--methods" in one_line_error(bad)
    negative = cli_in_process("compress", "any", "--bpw", "0.5,-1")
    assert negative.returncode == 2 and "--bpw" in one_line_error(negative)
    assert not (tmp_path / "signlock-runs").exists()
