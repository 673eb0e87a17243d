"""The sweep's own records without Ray: signlock-sweep.json, trials.csv's assembly, attempts."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from signlock.orchestrator.sweep import trials_table
from signlock.orchestrator.trial_runner import _record_attempt, start_over
from signlock.trainables.errors import ConfigError
from signlock.trainables.layout import RunDir
from signlock.trainables.records import SWEEP_FILE, FaultInjection, SweepContext, SweepRecord
from signlock.trainables.trainer import Restored


def make_record(tmp_path) -> SweepRecord:
    context = SweepContext(
        sweep_name="s",
        sweep_dir=str(tmp_path),
        spec={"name": "s"},
        tracking_uri="sqlite:///x.db",
        experiment_id="1",
        parent_run_id="abc",
        faults=(FaultInjection("s-0000", 20, "nan"),),
    )
    return SweepRecord(context, {"cpu": 1.0, "gpu": 0.0}, 4, 2, 3, "auto")


def test_the_sweep_record_round_trips_through_plain_json(tmp_path):
    record = make_record(tmp_path)
    record.write(tmp_path)
    raw = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert raw["options"] == {"max_concurrent": 2, "max_failures": 3, "address": "auto"}
    assert SweepRecord.read(tmp_path) == record


def test_a_damaged_sweep_record_is_a_one_line_error(tmp_path):
    (tmp_path / SWEEP_FILE).write_text('{"context": {}}')
    with pytest.raises(ConfigError, match=SWEEP_FILE):
        SweepRecord.read(tmp_path)


def test_trials_table_takes_finished_results_from_summaries_and_keeps_tunes_view_of_the_rest():
    states = pd.DataFrame(
        {
            "trial_id": ["a_0", "a_1", "a_2"],
            "name": ["s-0000", "s-0001", "s-0002"],
            "status": ["TERMINATED", "RUNNING", "ERROR"],
            "step": [90.0, 40.0, 20.0],  # Tune's last report may lag the trial's final step
            "val_ppl": [9.0, 8.0, math.nan],
            "error": [None, None, "InjectedFault: boom"],
        }
    )
    summaries = pd.DataFrame(
        {"steps": [100, 100], "val_ppl": [3.5, 2.5], "h_hat": [0.1, 0.2]},
        index=pd.Index(["s-0000", "s-0001"], name="trial"),
    )  # s-0001 finished once before, but this attempt is still running: Tune's view stands
    table = trials_table(states, summaries).set_index("name")
    assert table.loc["s-0000", "step"] == 100 and table.loc["s-0000", "val_ppl"] == 3.5
    assert table.loc["s-0001", "step"] == 40 and table.loc["s-0001", "val_ppl"] == 8.0
    assert table.loc["s-0002", "error"] == "InjectedFault: boom"
    assert table.loc["s-0000", "h_hat"] == 0.1 and math.isnan(table.loc["s-0001", "h_hat"])


def write_checkpoint(run_dir):
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("latest", "previous"):
        (checkpoints / f"{name}.pt").write_bytes(b"weights")
        (checkpoints / f"{name}.json").write_text('{"step": 40}')
    RunDir(run_dir).diverged_marker.write_text('{"reason": "nan"}')
    (run_dir / "trial.json").write_text("{}")


def test_start_over_drops_both_checkpoints_the_divergence_marker_and_the_record(tmp_path):
    write_checkpoint(tmp_path)
    start_over(tmp_path)  # only the driver calls it, for --restart-errored
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == []
    assert not RunDir(tmp_path).diverged_marker.exists() and not (tmp_path / "trial.json").exists()


def test_attempts_record_the_scheduler_id_and_an_older_checkpoint_resumed_from(tmp_path):
    _record_attempt(tmp_path, "t_00001", None)
    skipped = ("unreadable file latest.pt: truncated",)
    _record_attempt(tmp_path, "t_00009", Restored(20, tmp_path / "previous.pt", skipped))
    attempts = [json.loads(x) for x in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    assert [(a["attempt"], a["trial_id"], a["from_step"]) for a in attempts] == [
        (1, "t_00001", 0),
        (2, "t_00009", 20),
    ]
    assert attempts[1]["resumed_from"] == "previous.pt" and attempts[1]["skipped"] == list(skipped)


def test_trial_records_keep_integers_integers_in_trials_csv(tmp_path):
    from signlock.orchestrator.trial_record import SchedulerState, TrialState, trial_table
    from signlock.trainables.files import write_csv

    for index, rank in enumerate((2, None)):
        run_dir = tmp_path / "runs" / f"s-{index:04d}"
        run_dir.mkdir(parents=True)
        varied = {"config.init.template_rank": rank, "config.init.a_init": 0.02}
        TrialState(f"s-{index:04d}", f"t_{index}", "interrupted", 1, step=60,
                   checkpoint_step=60, varied=varied).write(run_dir)  # fmt: skip
        SchedulerState(f"t_{index}", "RUNNING").write(run_dir)
    table = trials_table(trial_table(tmp_path, driven=False), pd.DataFrame())
    write_csv(table, tmp_path / "trials.csv")
    text = pd.read_csv(tmp_path / "trials.csv", dtype=str)
    assert text["config.init.template_rank"].fillna("").tolist() == ["2", ""]
    assert text["step"].tolist() == ["60", "60"]
    assert text["config.init.a_init"].tolist() == ["0.02", "0.02"]
    assert (table["status"] == "INTERRUPTED").all()
