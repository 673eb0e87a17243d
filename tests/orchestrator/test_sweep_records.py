"""The sweep's own records without Ray: signlock-sweep.json, trials.csv's assembly, attempts."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from signlock.orchestrator.record import SWEEP_FILE, SweepRecord
from signlock.orchestrator.sweep import trials_table
from signlock.orchestrator.trial_runner import (
    DIVERGED_MARKER,
    FaultInjection,
    SweepContext,
    _record_attempt,
    _start_over_unless_continuing,
)
from signlock.trainables.errors import ConfigError


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
    (checkpoints / "latest.pt").write_bytes(b"weights")
    (checkpoints / "latest.json").write_text('{"step": 40}')
    (run_dir / DIVERGED_MARKER).write_text('{"reason": "nan"}')


def test_a_new_attempt_of_the_same_tune_trial_continues_its_checkpoint(tmp_path):
    write_checkpoint(tmp_path)
    _record_attempt(tmp_path, "t_00001", 0)
    _start_over_unless_continuing(tmp_path, "t_00001")
    assert (tmp_path / "checkpoints" / "latest.pt").exists()
    assert (tmp_path / DIVERGED_MARKER).exists()


def test_a_restarted_trial_under_a_new_tune_id_starts_from_scratch(tmp_path):
    write_checkpoint(tmp_path)
    _record_attempt(tmp_path, "t_00001", 0)
    _start_over_unless_continuing(tmp_path, "t_00009")  # --restart-errored: Tune's new id
    assert not (tmp_path / "checkpoints" / "latest.pt").exists()
    assert not (tmp_path / "checkpoints" / "latest.json").exists()
    assert not (tmp_path / DIVERGED_MARKER).exists()
    _record_attempt(tmp_path, "t_00009", 0)
    attempts = [json.loads(x) for x in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    assert [(a["attempt"], a["trial_id"]) for a in attempts] == [(1, "t_00001"), (2, "t_00009")]
