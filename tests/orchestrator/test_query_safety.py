"""`signlock query` on a real sqlite MLflow store (runs logged through signlock's own tracking
code), the real CLI in a subprocess: an unknown sweep is "not found" (exit 2), a truncated or
empty store is one line naming the file (exit 1, nothing created), and params keep their
types in every format (integers as integers, numbers as numbers)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signlock.orchestrator import tracking
from signlock.trainables.config import TrialConfig
from tests.orchestrator.test_cli import run_cli

SWEEP = "typed"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store with one sweep of two finished trials, one with a rank-2 template."""
    root = tmp_path_factory.mktemp("query")
    db = root / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(client, "signlock", (root / "a").as_uri())
    parent = tracking.create_sweep_run(client, experiment, SWEEP, {"sweep.name": SWEEP}, {})
    for index, rank in enumerate((None, 2)):
        config = TrialConfig.from_dict(
            {"name": f"{SWEEP}-{index:04d}", "seed": index, "init": {"template_rank": rank,
             "a_init": 0.02 if rank else None}}
        )  # fmt: skip
        run = tracking.TrialRun(uri, experiment, parent, SWEEP, config.name, f"id-{index}")
        run.open(tracking.flatten_params(config.to_dict()))
        run.finish({"steps": 100, "val_ppl": 4.5 + index, "n_tracked": 2048}, root)
    return db


def query(db: Path, *args: str):
    return run_cli("query", "--tracking-uri", f"sqlite:///{db}", *args, cwd=db.parent)


def one_line_error(result, status: int) -> str:
    assert result.returncode == status, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signlock: error: "), result.stderr[-3000:]
    return lines[0]


def test_an_unknown_sweep_is_not_found(store):
    result = query(store, "--sweep", "no-such")
    line = one_line_error(result, 2)
    assert line == f"signlock: error: not found: no sweep no-such under sqlite:///{store}"
    assert result.stdout == ""


def test_a_known_sweep_that_the_filter_empties_has_no_runs(store):
    result = query(store, "--sweep", SWEEP, "--filter", "metrics.val_ppl < 0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(no runs)"
    mlflow_filtered = query(store, "--sweep", SWEEP, "--mlflow-filter", "metrics.val_ppl < 0")
    assert mlflow_filtered.returncode == 0, mlflow_filtered.stderr
    assert mlflow_filtered.stdout.strip() == "(no runs)"


@pytest.mark.parametrize("size", [0, 100, "half"])
def test_a_truncated_store_is_one_line_naming_the_file(store, tmp_path, size):
    broken = tmp_path / "mlflow.db"
    data = store.read_bytes()
    broken.write_bytes(data[: len(data) // 2 if size == "half" else size])
    before = broken.read_bytes()
    result = query(broken, "--sweep", SWEEP)
    assert one_line_error(result, 1).startswith(f"signlock: error: unreadable file {broken}: ")
    assert broken.read_bytes() == before  # never turned into a new store


def test_json_keeps_numeric_params_numbers_and_integers_integers(store):
    result = query(store, "--sweep", SWEEP, "--format", "json", "--all-columns")
    assert result.returncode == 0, result.stderr
    runs = sorted(json.loads(result.stdout), key=lambda run: run["tags.mlflow.runName"])
    assert [run["params.seed"] for run in runs] == [0, 1]
    assert [run["params.init.template_rank"] for run in runs] == [None, 2]
    assert [run["params.init.a_init"] for run in runs] == [None, 0.02]
    assert runs[0]["params.optim.lr"] == pytest.approx(3e-4)
    assert runs[0]["params.model.linear_bias"] is True
    assert runs[0]["params.model.kind"] == "gpt"
    assert [run["metrics.steps"] for run in runs] == [100, 100]
    assert [run["metrics.val_ppl"] for run in runs] == [4.5, 5.5]


def test_csv_and_parquet_keep_integers(store, tmp_path):
    csv = query(store, "--sweep", SWEEP, "--format", "csv", "--all-columns")
    assert csv.returncode == 0, csv.stderr
    text = pd.read_csv(io.StringIO(csv.stdout), dtype=str)
    assert sorted(text["params.init.template_rank"].dropna()) == ["2"]
    assert sorted(text["metrics.steps"]) == ["100", "100"]
    output = tmp_path / "runs.parquet"
    written = query(store, "--sweep", SWEEP, "--format", "parquet", "--output", str(output),
                    "--all-columns")  # fmt: skip
    assert written.returncode == 0, written.stderr
    table = pd.read_parquet(output)
    assert str(table["params.init.template_rank"].dtype) == "Int64"
    assert str(table["params.seed"].dtype) == "Int64"
    assert str(table["params.init.a_init"].dtype) == "float64"
    assert str(table["metrics.steps"].dtype) == "Int64"
