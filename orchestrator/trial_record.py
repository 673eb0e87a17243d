"""Each trial's state as signlock itself records it: plain JSON in the trial's run directory.

Two writers, one file each, so they never race::

    runs/<trial>/trial.json      the trial runner: running / finished / failed / interrupted,
                                 the last logged step, the newest checkpoint's step, the latest
                                 objectives, the fields the sweep varies, the last error
    runs/<trial>/scheduler.json  the driver's Tune callback: Tune's trial id, status, failures

``status``, ``trials.csv`` and ``resume`` read only these (and never Tune's pickled state), so a
read-only command cannot be made to run code planted in a sweep directory.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from signlock.trainables.files import UnreadableFileError, read_json, write_json
from signlock.trainables.layout import RunDir, SweepDir
from signlock.trainables.schema import RESULT_METRICS

# What the runner says of its last attempt.
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
# What status and trials.csv say of a trial.
STATES = ("PENDING", "RUNNING", "INTERRUPTED", "TERMINATED", "ERROR")


@dataclass(frozen=True)
class TrialState:
    """``trial.json``: the runner's view of a trial."""

    name: str
    trial_id: str
    state: str
    attempt: int
    step: int = 0
    checkpoint_step: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    varied: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    updated_at: float = 0.0

    def write(self, run_dir: Path) -> TrialState:
        written = replace(self, updated_at=time.time())
        write_json(RunDir(run_dir).trial_state, asdict(written), indent=1)
        return written

    @staticmethod
    def read(run_dir: Path) -> TrialState | None:
        return _read_record(RunDir(run_dir).trial_state, TrialState)


@dataclass(frozen=True)
class SchedulerState:
    """``scheduler.json``: Tune's view of a trial, written by the driver."""

    trial_id: str
    status: str  # Tune's: RUNNING, TERMINATED, ERROR
    failures: int = 0

    def write(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(RunDir(run_dir).scheduler_state, asdict(self))

    @staticmethod
    def read(run_dir: Path) -> SchedulerState | None:
        return _read_record(RunDir(run_dir).scheduler_state, SchedulerState)


def _read_record(path: Path, record: type[Any]) -> Any:
    """The record in ``path`` (None when there is none yet), or one line naming the file."""
    if not path.is_file():
        return None
    try:
        return record(**read_json(path))
    except TypeError:
        raise UnreadableFileError(path, f"not a signlock {record.__name__} record") from None


def trial_status(
    runner: TrialState | None, scheduler: SchedulerState | None, *, driven: bool
) -> str:
    """One of :data:`STATES`. ``driven``: a driver holds the sweep now, so a trial that says it
    runs does; without one it was interrupted and ``resume`` continues it."""
    if runner is not None and runner.state == FINISHED:
        return "TERMINATED"
    if scheduler is not None and scheduler.status == "ERROR":
        return "ERROR"
    if runner is None:
        return "RUNNING" if driven and scheduler is not None else "PENDING"
    if runner.state == INTERRUPTED:
        return "INTERRUPTED"
    return "RUNNING" if driven else "INTERRUPTED"


def _row(run_dir: Path, *, driven: bool) -> dict[str, Any] | None:
    runner = TrialState.read(run_dir)
    scheduler = SchedulerState.read(run_dir)
    if runner is None and scheduler is None:
        return None
    metrics = runner.metrics if runner is not None else {}
    row: dict[str, Any] = {
        "trial_id": scheduler.trial_id if scheduler else runner.trial_id,  # type: ignore[union-attr]
        "name": run_dir.name,
        "status": trial_status(runner, scheduler, driven=driven),
        "step": runner.step if runner is not None else 0,
        "checkpoint_step": runner.checkpoint_step if runner is not None else -1,
        "failures": scheduler.failures if scheduler is not None else 0,
    }
    row.update({metric: metrics.get(metric, math.nan) for metric in RESULT_METRICS})
    row.update(runner.varied if runner is not None else {})
    row["error"] = runner.error if runner is not None and row["status"] == "ERROR" else None
    return row


def trial_table(sweep_dir: Path, *, driven: bool) -> pd.DataFrame:
    """One row per trial that has started (or that Tune has scheduled), by name: trial id,
    status (:data:`STATES`), last step, newest checkpoint step, failures, latest objectives, the
    fields the sweep varies (``config.<key>``) and the last error."""
    runs = SweepDir(sweep_dir).runs
    directories = sorted(path for path in runs.iterdir() if path.is_dir()) if runs.is_dir() else []
    rows = [row for path in directories if (row := _row(path, driven=driven)) is not None]
    columns = ["trial_id", "name", "status", "step", "checkpoint_step", "failures"]
    return typed_frame(rows, [*columns, *RESULT_METRICS, "error"])


def typed_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame whose columns keep their values' types: integers (missing ones
    aside) as nullable ``Int64`` — a template rank 2 is never written 2.0 — other numbers as
    floats, anything else as it is."""
    names = list(dict.fromkeys([*columns, *(key for row in rows for key in row)]))
    frame = pd.DataFrame({name: pd.Series([row.get(name) for row in rows], dtype=object)
                          for name in names})  # fmt: skip
    for name in names:
        present = [value for value in frame[name] if value is not None and value == value]
        if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            frame[name] = frame[name].astype("Int64")
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return frame
