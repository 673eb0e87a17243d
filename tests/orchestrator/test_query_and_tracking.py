"""The query filter and the MLflow child-run bookkeeping, on a real sqlite MLflow store."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signlock.orchestrator import tracking
from signlock.orchestrator.query import apply_filter, parse_filter, write_runs
from signlock.orchestrator.trial_runner import running_objectives
from signlock.trainables.errors import ConfigError
from signlock.trainables.records import FaultInjection

RUNS = pd.DataFrame(
    {
        "run_id": ["a", "b", "c", "d"],
        "params.init.a_init": ["0.005", "0.02", "0.05", None],
        "params.optim.eps": ["1e-08", "1e-08", "1e-08", "1e-08"],
        "params.tracker.eps": ["0.0001", "0.0001", "0.0001", "0.0001"],
        "metrics.val_ppl": [4.0, 6.0, 3.0, 2.0],
        "tags.mlflow.runName": ["x-0", "x-1", "y-0", "y-1"],
        "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED"],
    }
)


def ids(frame: pd.DataFrame) -> list[str]:
    return frame["run_id"].tolist()


def test_filter_compares_params_numerically_and_resolves_short_names():
    assert ids(apply_filter(RUNS, "params.a_init > 0.01")) == ["b", "c"]
    # as strings "0.05" > "0.01" but also "0.005" < "0.01": numeric comparison is what we want
    assert ids(apply_filter(RUNS, "params.a_init > 0.01 and metrics.val_ppl < 5")) == ["c"]
    assert ids(apply_filter(RUNS, "params.init.a_init <= 0.005")) == ["a"]
    assert ids(apply_filter(RUNS, "tags.mlflow.runName = 'y-1'")) == ["d"]
    assert ids(apply_filter(RUNS, "attributes.status != 'FAILED' AND metrics.val_ppl >= 4")) == [
        "a",
        "b",
    ]
    assert ids(apply_filter(RUNS, None)) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("params.a_init >> 1", "--filter"),
        ("a_init > 1", "--filter"),
        ("params.eps > 1", "ambiguous"),
        ("params.missing = 1", "params.missing"),
        ("metrics.val_ppl < five", "five"),
    ],
)
def test_bad_filters_name_the_problem(text, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_filter(RUNS, text)


def test_parse_filter_values():
    assert parse_filter('metrics.val_ppl < 5 and tags.x = "a b"') == [
        ("metrics.val_ppl", "<", 5.0),
        ("tags.x", "=", "a b"),
    ]


def test_write_runs_formats(tmp_path):
    assert "x-0" in write_runs(RUNS, "csv", None, all_columns=True)
    assert write_runs(RUNS, "parquet", tmp_path / "r.parquet", all_columns=True).startswith("4")
    assert pd.read_parquet(tmp_path / "r.parquet")["run_id"].tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ConfigError, match="--format"):
        write_runs(RUNS, "xml", None, all_columns=False)
    with pytest.raises(ConfigError, match="--output"):
        write_runs(RUNS, "parquet", None, all_columns=False)


def test_flatten_params_and_finite_metrics():
    flat = tracking.flatten_params({"init": {"a_init": 0.02, "targets": ["a", "b"]}, "seed": 3})
    assert flat == {"init.a_init": "0.02", "init.targets": '["a", "b"]', "seed": "3"}
    metrics = tracking.finite_metrics({"a": 1, "b": math.nan, "c": True, "d": "x", "e": 2.5})
    assert metrics == {"a": 1.0, "e": 2.5}


def test_a_reopened_trial_run_continues_without_duplicate_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(client, "signlock", (tmp_path / "a").as_uri())
    parent = tracking.create_sweep_run(client, experiment, "s", {"sweep.name": "s"}, {})

    def attempt() -> tracking.TrialRun:
        run = tracking.TrialRun(uri, experiment, parent, "s", "s-0000", f"id-{len(ids)}")
        ids.append(run.trial_id)
        run.open({"seed": "0"})
        return run

    ids: list[str] = []

    first = attempt()
    first.log_rows([{"step": 10, "train_loss": 3.0}, {"step": 20, "train_loss": 2.5}])
    first.fail("RuntimeError: worker died")
    assert client.get_run(first.run_id).data.tags[tracking.TAG_ERROR].startswith("Runtime")

    second = attempt()  # resumed from the step-10 checkpoint: recomputes step 20
    assert second.run_id == first.run_id
    assert tracking.TAG_ERROR not in client.get_run(second.run_id).data.tags
    second.log_rows([{"step": 20, "train_loss": 2.5}, {"step": 30, "train_loss": 2.0}])
    (tmp_path / "summary.json").write_text("{}")
    second.finish({"steps": 30, "val_ppl": 4.2, "name": "s-0000"}, tmp_path)

    history = client.get_metric_history(first.run_id, "train_loss")
    assert sorted(m.step for m in history) == [10, 20, 30]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["val_ppl"] == 4.2
    assert run.data.tags[tracking.TAG_PARENT] == parent
    assert [a.path for a in client.list_artifacts(first.run_id)] == ["summary.json"]
    children = client.search_runs([experiment], f"tags.`{tracking.TAG_KIND}` = 'trial'")
    assert len(children) == 1 and children[0].info.run_name == "s-0000"
    assert children[0].data.tags[tracking.TAG_TRIAL_ID] == "id-1"


def test_running_objectives_are_the_latest_eval_and_the_trackers_flip_mean():
    nan = math.nan
    rows = [
        {"step": 10, "flip_mean": 0.02, "val_loss": nan, "val_ppl": nan, "val_error": nan},
        {"step": 30, "flip_mean": 0.01, "val_loss": 1.0, "val_ppl": 2.7, "val_error": nan},
        {"step": 40, "flip_mean": 0.0075, "val_loss": nan, "val_ppl": nan, "val_error": nan},
    ]
    first = running_objectives(rows[:1])
    assert first["flip_mean"] == 0.02 and math.isnan(first["val_ppl"])
    out = running_objectives(rows)
    assert out["flip_mean"] == 0.0075  # the newest row's cumulative value, not recomputed
    assert out["val_ppl"] == 2.7 and out["val_loss"] == 1.0 and math.isnan(out["val_error"])
    assert math.isnan(running_objectives([])["flip_mean"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tiny-0001:30", FaultInjection("tiny-0001", 30, "raise")),
        ("tiny-0001:30:nan", FaultInjection("tiny-0001", 30, "nan")),
        ("a:b:7:raise", FaultInjection("a:b", 7, "raise")),
        ("tiny-0002:60:hang", FaultInjection("tiny-0002", 60, "hang")),
    ],
)
def test_fault_injection_parsing(text, expected):
    assert FaultInjection.parse(text) == expected


@pytest.mark.parametrize("text", ["tiny", "tiny:x", ":3", "tiny:3:boom"])
def test_bad_fault_injection_is_a_config_error(text):
    with pytest.raises(ConfigError, match="--inject-fault"):
        FaultInjection.parse(text)


def test_local_tracking_uris_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        tracking.absolute_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    )
    assert tracking.absolute_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert tracking.absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert (
        tracking.absolute_tracking_uri(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"
    )
