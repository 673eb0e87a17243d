"""One sweep trial, independent of the scheduler: run directory, MLflow child run, Parquet.

The Ray Tune adapter (:mod:`signlock.orchestrator.ray_tune`) calls :func:`run_sweep_trial` with
Tune's trial id and a ``report`` callback; nothing here imports Ray. Per trial, under the sweep
directory (shared by all workers: a laptop, or a cluster's shared filesystem)::

    runs/<trial>/                 the trial's run directory (see signlock.trainables.trainer)
    runs/<trial>/attempts.jsonl   one line per start: attempt, scheduler trial id, resumed step
    flips/trial=<trial>/part-0.parquet      K histogram, written when the trial finishes
    tensor_metrics/trial=<trial>/part-0.parquet  per-tensor time series, likewise
    summaries/trial=<trial>/part-0.parquet  flattened config + summary, one row

``<trial>`` is the trial's name: the grid point's (``my-sweep-0003``), or for sampled trials the
spec name plus a hash of the sampled values, so a restarted trial keeps its run directory and its
MLflow run.

Checkpoints live only in the run directory (``checkpoints/latest.pt`` and the one before it,
every ``checkpoint_every`` steps). Every start of a trial continues from its newest readable
checkpoint, whatever the scheduler's trial id; a finished trial is not run again. Only the
driver deletes a checkpoint, and only when the user asks (``--restart-errored``:
:func:`start_over`). The runner records the trial's state in ``runs/<trial>/trial.json``
(:mod:`signlock.orchestrator.trial_record`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from signlock.orchestrator.tracking import TrialRun, finite_metrics, flatten_params
from signlock.orchestrator.trial_record import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    TrialState,
)
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import TrainingDivergedError
from signlock.trainables.files import read_json, write_json, write_text
from signlock.trainables.layout import FLIPS, SUMMARIES, TENSOR_METRICS, RunDir, SweepDir
from signlock.trainables.records import (
    FaultInjection,
    SweepContext,
    attempts_of,
    write_partition,
)
from signlock.trainables.schema import FLIP_OBJECTIVE, VALIDATION_METRICS
from signlock.trainables.trainer import Restored, Trial, checkpoint_files

# report(metrics) is called at every log step while the trial runs.
Report = Callable[[dict[str, float]], None]


class InjectedFault(RuntimeError):
    """Raised by ``--inject-fault NAME:STEP:raise`` to exercise retries."""


@functools.cache
def _spec(spec_json: str) -> SweepSpec:
    return SweepSpec.from_dict(json.loads(spec_json))


def resolve_trial_config(context: SweepContext, config: dict[str, Any]) -> TrialConfig:
    """The scheduler's trial config → TrialConfig: the grid point under ``"overrides"`` (Optuna
    trials have none and use the spec's single point) merged with the sampled dotted keys."""
    spec = _spec(json.dumps(context.spec, sort_keys=True))
    sampled = {key: value for key, value in config.items() if key != "overrides"}
    point = config.get("overrides") or spec.grid_overrides()[0]
    cfg = spec.trial_config(spec.merge(point, sampled))
    if not context.unique_names:
        encoded = json.dumps(config, sort_keys=True, default=str).encode()
        cfg = cfg.with_overrides({"name": f"{cfg.name}-{hashlib.sha1(encoded).hexdigest()[:8]}"})
    return cfg


def varied_fields(context: SweepContext, cfg: TrialConfig) -> dict[str, Any]:
    """``config.<key>`` for every field the sweep varies (axes, points, seed) in this trial."""
    spec = _spec(json.dumps(context.spec, sort_keys=True))
    values = cfg.to_dict()
    return {
        f"config.{key}": functools.reduce(lambda node, part: node[part], key.split("."), values)
        for key in spec.varied_keys()
    }


def start_over(run_dir: Path) -> None:
    """Make the next start of this trial begin at step 0 (``--restart-errored``): drop its
    checkpoints, its divergence marker and its record (its outputs are rewritten as it runs)."""
    files = RunDir(run_dir)
    for checkpoint in checkpoint_files(files.checkpoint):
        checkpoint.unlink(missing_ok=True)
        checkpoint.with_suffix(".json").unlink(missing_ok=True)
    files.diverged_marker.unlink(missing_ok=True)
    files.trial_state.unlink(missing_ok=True)


def _record_attempt(run_dir: Path, trial_id: str, restored: Restored | None) -> float:
    """Add this start to ``attempts.jsonl`` (rewritten atomically); returns its start time."""
    started = time.time()
    attempts = attempts_of(run_dir)
    entry: dict[str, Any] = {
        "attempt": len(attempts) + 1,
        "trial_id": trial_id,
        "from_step": restored.step if restored is not None else 0,
        "t": started,
    }
    if restored is not None and restored.skipped:
        entry["resumed_from"] = restored.path.name
        entry["skipped"] = list(restored.skipped)
    lines = [json.dumps(attempt) for attempt in [*attempts, entry]]
    write_text(RunDir(run_dir).attempts, "\n".join(lines) + "\n")
    return started


def _inject(fault: FaultInjection, trial: Trial, run_dir: Path) -> None:
    marker = run_dir / f"fault-{fault.kind}-{fault.step}.injected"
    if marker.exists():
        return
    marker.touch()
    if fault.kind == "raise":
        raise InjectedFault(f"injected fault in trial {fault.trial_name} at step {fault.step}")
    if fault.kind == "hang":
        threading.Event().wait()  # nothing sets it: the trial waits until its process is killed
    with torch.no_grad():
        next(trial.model.parameters()).fill_(float("nan"))


def running_objectives(rows: list[dict[str, float]]) -> dict[str, float]:
    """What the scheduler sees as the trial's objectives while it runs: the latest validation
    metrics and the tracker's cumulative flip_mean of the newest row."""
    latest_eval = next((r for r in reversed(rows) if not math.isnan(r["val_loss"])), {})
    objectives = {key: latest_eval.get(key, math.nan) for key in VALIDATION_METRICS}
    return {**objectives, FLIP_OBJECTIVE: rows[-1][FLIP_OBJECTIVE] if rows else math.nan}


def _check_diverged(run_dir: Path) -> None:
    """A run that diverged diverges again from the same checkpoint: fail fast on retries."""
    marker = RunDir(run_dir).diverged_marker
    if marker.exists():
        raise TrainingDivergedError(read_json(marker)["reason"])


def run_sweep_trial(
    config: dict[str, Any], context: SweepContext, trial_id: str, report: Report
) -> dict[str, float]:
    """Run (or continue) one trial of the sweep; its final metrics for the scheduler."""
    cfg = resolve_trial_config(context, config)
    sweep_dir = Path(context.sweep_dir)
    run_dir = SweepDir(sweep_dir).run(cfg.name).path
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = _finished_result(run_dir, sweep_dir, cfg)
    if finished is not None:  # a rebuilt sweep (its Tune state was lost) meets a done trial
        return finished
    mlflow_run = TrialRun(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        context.sweep_name,
        cfg.name,
        trial_id,
    )
    mlflow_run.open(flatten_params(cfg.to_dict()))
    attempt = len(attempts_of(run_dir)) + 1
    state = TrialState(cfg.name, trial_id, RUNNING, attempt, varied=varied_fields(context, cfg))
    try:
        summary, started = _train(cfg, context, run_dir, mlflow_run, state, report)
    except TrainingDivergedError as error:
        write_json(RunDir(run_dir).diverged_marker, {"reason": str(error)})
        _ended(run_dir, state, FAILED, f"TrainingDivergedError: {error}")
        mlflow_run.fail(f"TrainingDivergedError: {error}", run_dir)
        raise
    except (KeyboardInterrupt, SystemExit):  # the sweep was stopped: resumable, not failed
        _ended(run_dir, state, INTERRUPTED, None)
        mlflow_run.interrupted()
        raise
    except BaseException as error:
        _ended(run_dir, state, FAILED, f"{type(error).__name__}: {error}")
        mlflow_run.fail(f"{type(error).__name__}: {error}", run_dir)
        raise
    mlflow_run.finish(summary, run_dir)
    timing = {"attempt_started_at": started, "finished_at": time.time()}
    _write_sweep_tables(sweep_dir, cfg, {**summary, **timing}, run_dir)
    last = TrialState.read(run_dir) or state
    steps = summary["steps"]
    replace(last, state=FINISHED, step=steps, checkpoint_step=steps).write(run_dir)
    return _result(summary)


def _train(
    cfg: TrialConfig,
    context: SweepContext,
    run_dir: Path,
    mlflow_run: TrialRun,
    state: TrialState,
    report: Report,
) -> tuple[dict[str, Any], float]:
    """The attempt itself: restore, train (logging and reporting each row), the summary."""
    _check_diverged(run_dir)
    trial = Trial(cfg, run_dir, progress=False)
    restored = trial.restore()
    started = _record_attempt(run_dir, state.trial_id, restored)
    if restored is not None and restored.skipped:
        checkpoint = restored.path.relative_to(run_dir).as_posix()
        mlflow_run.resumed_from(checkpoint, restored.skipped)
    from_step = restored.step if restored is not None else 0
    current = replace(state, step=from_step, checkpoint_step=from_step if restored else -1)
    current = current.write(run_dir)
    faults = [f for f in context.faults if f.trial_name == cfg.name]

    def on_row(row: dict[str, float], saved: Path | None) -> None:
        nonlocal current
        mlflow_run.log_rows([row])
        objectives = running_objectives(trial.rows)
        step = int(row["step"])
        checkpoint = step if saved is not None else current.checkpoint_step
        current = replace(
            current, step=step, checkpoint_step=checkpoint, metrics=finite_metrics(objectives)
        ).write(run_dir)
        for fault in faults:
            if step >= fault.step:  # the first logged step at or after STEP
                _inject(fault, trial, run_dir)
        report({**finite_metrics(row), **objectives})

    return trial.run(on_row), started


def _ended(run_dir: Path, state: TrialState, how: str, error: str | None) -> None:
    last = TrialState.read(run_dir) or state
    replace(last, state=how, error=error[:2000] if error else None).write(run_dir)


def _result(summary: dict[str, Any]) -> dict[str, float]:
    return {**finite_metrics(summary), "step": summary["steps"], "finished": 1.0}


def _finished_result(run_dir: Path, sweep_dir: Path, cfg: TrialConfig) -> dict[str, float] | None:
    """The result of a trial that already finished (its record, summary and final checkpoint
    agree), writing its sweep tables if they were lost; None when it has to run."""
    state = TrialState.read(run_dir)
    summary_path = RunDir(run_dir).summary
    if state is None or state.state != FINISHED or not summary_path.is_file():
        return None
    summary = read_json(summary_path)
    if summary.get("steps") != cfg.steps:
        return None
    if not SweepDir(sweep_dir).partition(SUMMARIES, cfg.name).is_file():
        _write_sweep_tables(sweep_dir, cfg, summary, run_dir)
    return _result(summary)


def _write_sweep_tables(
    sweep_dir: Path, cfg: TrialConfig, summary: dict[str, Any], run_dir: Path
) -> None:
    files = RunDir(run_dir)
    for dataset, path in ((FLIPS, files.flips), (TENSOR_METRICS, files.tensor_metrics)):
        if path.is_file():
            write_partition(sweep_dir, dataset, cfg.name, pd.read_parquet(path))
    row = {**flatten_params(cfg.to_dict()), **finite_metrics(summary), "run_dir": str(run_dir)}
    write_partition(sweep_dir, SUMMARIES, cfg.name, pd.DataFrame([row]))
