"""`signlock analyze` and `report` never lose earlier results and fail in one line: flags are
checked before anything is touched, a partial analysis replaces only its own files (on disk and
on the parent MLflow run), a failure leaves the previous outputs, garbled Parquet partitions
and unknown sweeps are one line; the tables keep integers as integers and say why a
goodness-of-fit test does not apply. A real enhancement-smoke sweep, the real CLI."""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signlock.analysis.lockin import goodness_of_fit
from tests.analysis import test_analyze_command as analyze_tests
from tests.orchestrator.test_cli import run_cli
from tests.orchestrator.test_sweep import sweep_runs

SWEEP = "enhancement-smoke"
finished_sweep = analyze_tests.finished_sweep  # module-scoped: a real sweep, its root folder


def sweep_dir(root: Path) -> Path:
    return root / "signlock-runs" / "sweeps" / SWEEP


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{root / 'signlock-runs' / 'mlflow.db'}"


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def one_line_error(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signlock: error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def analysed(finished_sweep, tmp_path_factory) -> Path:
    """A copy of the sweep (same parent MLflow run) with a full analysis."""
    copy = tmp_path_factory.mktemp("analysed") / SWEEP
    shutil.copytree(sweep_dir(finished_sweep), copy)
    result = run_cli("analyze", str(copy), "--resamples", "200", cwd=finished_sweep)
    assert result.returncode == 0, result.stderr[-3000:]
    return copy


@pytest.fixture
def analysed_copy(analysed, tmp_path) -> Path:
    copy = tmp_path / SWEEP
    shutil.copytree(analysed, copy)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--resamples", "0"], "--resamples"),
        (["--resamples", "-3"], "--resamples"),
        (["--x", "val_ppl", "--y", "val_ppl"], "--y"),
        (["--what", "pareto", "--x", "name"], "--x"),
    ],
)
def test_a_bad_flag_is_refused_before_anything_is_touched(
    finished_sweep, analysed_copy, cli_in_process, flags, field
):
    before = digests(analysed_copy / "analysis")
    result = cli_in_process("analyze", str(analysed_copy), *flags, cwd=finished_sweep)
    assert one_line_error(result, 2).startswith(f"signlock: error: invalid {field}=")
    assert digests(analysed_copy / "analysis") == before


@pytest.mark.slow
def test_a_partial_analysis_replaces_only_what_it_recomputes(
    finished_sweep, analysed_copy, tmp_path
):
    analysis = analysed_copy / "analysis"
    before = digests(analysis)
    result = run_cli(
        "analyze", str(analysed_copy), "--what", "pareto", "--x", "flip_mean", "--y", "val_ppl",
        cwd=finished_sweep,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(Path(line).name for line in result.stdout.split()) == [
        "pareto.csv", "pareto.parquet", "pareto.png"]  # fmt: skip
    after = digests(analysis)
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if not k.startswith("pareto")} == {
        k: v for k, v in before.items() if not k.startswith("pareto")
    }
    (parent,), _ = sweep_runs(tracking_uri(finished_sweep), SWEEP)
    client = MlflowClient(tracking_uri(finished_sweep))
    for name in ("lockin.csv", "seeds.csv", "pareto.csv"):  # the parent run holds the same
        downloads = tmp_path / "logged" / name
        downloads.mkdir(parents=True)
        logged = client.download_artifacts(parent.info.run_id, f"analysis/{name}", str(downloads))
        assert Path(logged).read_bytes() == (analysis / name).read_bytes()

    report = run_cli("report", str(analysed_copy), cwd=finished_sweep)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (analysis / "report.html").read_text(encoding="utf-8")
    lockin_section = page.split("<h2>Lock-in statistics")[1].split("<h2>")[0]
    assert "(none)" not in lockin_section and "__pooled__" in lockin_section


@pytest.mark.slow
def test_a_failed_analysis_leaves_the_previous_outputs(finished_sweep, analysed_copy):
    before = digests(analysed_copy / "analysis")
    garbled = analysed_copy / "tensor_metrics" / f"trial={SWEEP}-0001" / "part-0.parquet"
    garbled.write_bytes(b"not parquet at all")  # read last, after the lock-in tables are made
    result = run_cli("analyze", str(analysed_copy), "--resamples", "50", cwd=finished_sweep)
    assert str(garbled) in one_line_error(result, 1)
    assert digests(analysed_copy / "analysis") == before
    assert sorted(p.name for p in analysed_copy.iterdir() if "analysis" in p.name) == ["analysis"]


@pytest.mark.slow
def test_a_sweep_without_finished_trials_is_one_line_and_creates_nothing(finished_sweep, tmp_path):
    copy = tmp_path / SWEEP
    shutil.copytree(sweep_dir(finished_sweep), copy, ignore=shutil.ignore_patterns("analysis"))
    shutil.rmtree(copy / "summaries")
    (parent,), _ = sweep_runs(tracking_uri(finished_sweep), SWEEP)
    client = MlflowClient(tracking_uri(finished_sweep))
    history = client.get_metric_history(parent.info.run_id, "analysis.trials")
    result = run_cli("analyze", str(copy), cwd=finished_sweep)
    assert "no finished trials" in one_line_error(result, 1)
    assert not (copy / "analysis").exists()
    assert sorted(p.name for p in copy.iterdir() if "analysis" in p.name) == []
    assert client.get_metric_history(parent.info.run_id, "analysis.trials") == history


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "dataset"),
    [("analyze", "flips"), ("analyze", "summaries"), ("analyze", "tensor_metrics"),
     ("report", "flips"), ("report", "tensor_metrics")],
)  # fmt: skip
def test_a_garbled_partition_is_one_line_naming_the_file(
    finished_sweep, tmp_path, command, dataset
):
    copy = tmp_path / SWEEP
    shutil.copytree(sweep_dir(finished_sweep), copy, ignore=shutil.ignore_patterns("analysis"))
    garbled = copy / dataset / f"trial={SWEEP}-0001" / "part-0.parquet"
    garbled.write_bytes(garbled.read_bytes()[:200])  # truncated: no footer
    result = run_cli(command, str(copy), cwd=finished_sweep)
    line = one_line_error(result, 1)
    assert line.startswith(f"signlock: error: unreadable file {garbled}: ")


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_an_unknown_sweep_is_not_found_under_the_storage(tmp_path, cli_in_process, command):
    storage = tmp_path / "sweeps"
    result = cli_in_process(command, "no-such", "--storage", str(storage))
    expected = f"signlock: error: not found: no sweep no-such under {storage}"
    assert one_line_error(result, 2) == expected
    assert not storage.exists()


def test_goodness_of_fit_without_degrees_of_freedom_says_why():
    one_flip_each = goodness_of_fit([0, 1], [22_000, 120])  # ĝ = 0: two bins, two parameters
    assert not one_flip_each.applicable and one_flip_each.dof is None
    assert math.isnan(one_flip_each.statistic) and math.isnan(one_flip_each.p_value)
    assert one_flip_each.reason.startswith("not applicable: g_hat = 0")
    no_flips = goodness_of_fit([0], [1000])
    assert no_flips.dof is None and "h_hat = 0" in no_flips.reason


@pytest.mark.slow
def test_the_tables_keep_integers_and_explain_missing_goodness_of_fit(analysed):
    lockin = pd.read_parquet(analysed / "analysis" / "lockin.parquet")
    pooled = lockin[lockin["tensor"] == "__pooled__"]
    assert str(lockin["gof_dof"].dtype) == "Int64" and str(lockin["n"].dtype) == "Int64"
    applicable = pooled["gof_dof"].notna()
    assert (pooled.loc[applicable, "gof_dof"] >= 1).all()
    assert pooled.loc[applicable, "gof_reason"].isna().all()
    assert pooled.loc[~applicable, "gof_reason"].str.startswith("not applicable").all()
    assert (~applicable).any()  # two of the smoke trials have ĝ = 0
    assert pooled.loc[~applicable, "gof_p"].isna().all()

    for stem in ("pareto", "seeds"):
        table = pd.read_parquet(analysed / "analysis" / f"{stem}.parquet")
        assert str(table["config.init.template_rank"].dtype) == "Int64", stem
        assert set(table["config.init.template_rank"].dropna()) == {2}
    pareto = pd.read_parquet(analysed / "analysis" / "pareto.parquet")
    for column in ("config.seed", "steps", "n_tracked", "zero_crossings"):
        assert str(pareto[column].dtype) == "Int64", column
    assert str(pareto["config.init.a_init"].dtype) == "float64"
    text = pd.read_csv(analysed / "analysis" / "pareto.csv", dtype=str)
    assert set(text["config.init.template_rank"].dropna()) <= {"2"}
    assert set(text["steps"]) == {"100"}


@pytest.mark.slow
def test_the_report_of_an_interrupted_sweep_shows_steps_as_integers(finished_sweep, analysed_copy):
    trials = pd.read_csv(analysed_copy / "trials.csv")
    trials.loc[0, ["status", "step"]] = ["RUNNING", 12000]  # interrupted at step 12000
    trials.loc[1, ["status", "step"]] = ["PENDING", math.nan]  # never started
    trials.to_csv(analysed_copy / "trials.csv", index=False)  # step: 12000.0, NaN, 100.0
    result = run_cli("report", str(analysed_copy), cwd=finished_sweep)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (analysed_copy / "analysis" / "report.html").read_text(encoding="utf-8")
    table = page.split("<h2>Trials</h2>")[1].split("<h2>")[0]
    assert "<td>12000</td>" in table and "<td>100</td>" in table and "1.2e+04" not in table
    assert "NA&gt;" not in table and "<NA>" not in table
