"""The Ray Tune function trainable: one signlock ``Trial`` wired to Tune and MLflow.

Per trial, under the sweep directory (assumed shared by all workers: a laptop, or a cluster
with a shared filesystem such as SLURM home/scratch)::

    runs/<trial>/                 the trial's run directory (see signlock.trainables.trainer)
    runs/<trial>/attempts.jsonl   one line per start: attempt number, step it resumed from
    flips/trial=<trial>/part-0.parquet      K histogram, written when the trial finishes
    summaries/trial=<trial>/part-0.parquet  flattened config + summary, one row

``<trial>`` is the trial's name: the grid point's (``my-sweep-0003``), or for sampled trials the
spec name plus a hash of the sampled values. Unlike Tune's trial id it survives
``restart_errored``, so a restarted trial keeps its run directory and its MLflow run.

Checkpoints: the trial writes ``checkpoints/latest.pt`` every ``checkpoint_every`` steps and the
same file is reported to Tune, so ``FailureConfig(max_failures)`` and ``Tuner.restore`` can resume
it. On a restart the newer of the run directory's and Tune's checkpoint is used; when Tune hands
over none (a first start, or ``restart_errored``) the trial starts from scratch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ray import tune

from signlock.orchestrator.tracking import TrialRun, finite_metrics, flatten_params
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError, TrainingDivergedError
from signlock.trainables.schema import FLIP_OBJECTIVE, VALIDATION_METRICS
from signlock.trainables.trainer import CHECKPOINT_NAME, Trial, checkpoint_step

DIVERGED_MARKER = "diverged.json"
FAULT_KINDS = ("raise", "nan")


class InjectedFault(RuntimeError):
    """Raised by ``--inject-fault NAME:STEP:raise`` to exercise retries."""


@dataclass(frozen=True)
class FaultInjection:
    """Make trial ``trial_name`` fail once at ``step``: ``raise`` an exception (a crashed worker)
    or poison its weights with NaN (a diverging run, caught by the trial's own check)."""

    trial_name: str
    step: int
    kind: str = "raise"

    @staticmethod
    def parse(text: str) -> FaultInjection:
        """``NAME:STEP[:raise|nan]`` (NAME may itself contain colons)."""
        parts = text.split(":")
        kind = parts.pop() if len(parts) >= 3 and parts[-1] in FAULT_KINDS else "raise"
        step = parts.pop() if len(parts) >= 2 else ""
        name = ":".join(parts)
        if not name or not step.isdigit():
            raise ConfigError("--inject-fault", text, "TRIAL_NAME:STEP[:raise|nan]")
        return FaultInjection(name, int(step), kind)


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep needs besides its own overrides (JSON-able, no pickles)."""

    sweep_name: str
    sweep_dir: str
    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    unique_names: bool = True
    faults: tuple[FaultInjection, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SweepContext:
        faults = tuple(FaultInjection(**f) for f in data.get("faults", ()))
        return SweepContext(**{**data, "faults": faults})


@functools.cache
def _spec(spec_json: str) -> SweepSpec:
    return SweepSpec.from_dict(json.loads(spec_json))


def resolve_trial_config(context: SweepContext, config: dict[str, Any]) -> TrialConfig:
    """Tune's trial config → TrialConfig: the grid point under ``"overrides"`` (Optuna trials
    have none and use the spec's single point) merged with the sampled dotted keys."""
    spec = _spec(json.dumps(context.spec, sort_keys=True))
    sampled = {key: value for key, value in config.items() if key != "overrides"}
    point = config.get("overrides") or spec.grid_overrides()[0]
    cfg = spec.trial_config(spec.merge(point, sampled))
    if not context.unique_names:
        encoded = json.dumps(config, sort_keys=True, default=str).encode()
        cfg = cfg.with_overrides({"name": f"{cfg.name}-{hashlib.sha1(encoded).hexdigest()[:8]}"})
    return cfg


def _adopt_checkpoint(run_dir: Path) -> int:
    """Make ``run_dir`` hold the newest usable checkpoint; returns its step (-1: start fresh)."""
    local = run_dir / "checkpoints" / CHECKPOINT_NAME
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        for stale in (local, local.with_suffix(".json"), run_dir / DIVERGED_MARKER):
            stale.unlink(missing_ok=True)
        return -1
    with checkpoint.as_directory() as directory:
        reported = Path(directory) / CHECKPOINT_NAME
        if checkpoint_step(reported) > checkpoint_step(local):
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(reported, local)
            shutil.copy2(reported.with_suffix(".json"), local.with_suffix(".json"))
    return checkpoint_step(local)


def _tune_checkpoint(saved: Path) -> tune.Checkpoint:
    """A Tune checkpoint directory holding the trial checkpoint (``report`` copies it to storage).
    Staged beside the run directory with hard links, so large checkpoints are not copied twice."""
    staging = Path(tempfile.mkdtemp(prefix=".tune-checkpoint-", dir=saved.parent))
    for source in (saved, saved.with_suffix(".json")):
        try:
            os.link(source, staging / source.name)
        except OSError:  # a filesystem without hard links
            shutil.copy2(source, staging / source.name)
    return tune.Checkpoint.from_directory(str(staging))


def _record_attempt(run_dir: Path, from_step: int) -> float:
    """Append this start to ``attempts.jsonl``; returns its start time."""
    log = run_dir / "attempts.jsonl"
    attempt = len(log.read_text().splitlines()) + 1 if log.exists() else 1
    started = time.time()
    with log.open("a") as handle:
        handle.write(json.dumps({"attempt": attempt, "from_step": from_step, "t": started}))
        handle.write("\n")
    return started


def _write_partition(sweep_dir: Path, dataset: str, trial: str, table: pd.DataFrame) -> None:
    """Hive-partitioned ``<dataset>/trial=<name>/part-0.parquet``, replaced atomically."""
    directory = sweep_dir / dataset / f"trial={trial}"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "part-0.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(directory / "part-0.parquet")


def _inject(fault: FaultInjection, trial: Trial, run_dir: Path) -> None:
    marker = run_dir / f"fault-{fault.kind}-{fault.step}.injected"
    if marker.exists():
        return
    marker.touch()
    if fault.kind == "raise":
        raise InjectedFault(f"injected fault in trial {fault.trial_name} at step {fault.step}")
    with torch.no_grad():
        next(trial.model.parameters()).fill_(float("nan"))


def running_objectives(rows: list[dict[str, float]]) -> dict[str, float]:
    """What Tune sees as the trial's objectives while it runs: the latest validation metrics and
    the tracker's cumulative flip_mean of the newest row."""
    latest_eval = next((r for r in reversed(rows) if not math.isnan(r["val_loss"])), {})
    objectives = {key: latest_eval.get(key, math.nan) for key in VALIDATION_METRICS}
    return {**objectives, FLIP_OBJECTIVE: rows[-1][FLIP_OBJECTIVE] if rows else math.nan}


def _check_diverged(run_dir: Path) -> None:
    """A run that diverged diverges again from the same checkpoint: fail fast on retries."""
    marker = run_dir / DIVERGED_MARKER
    if marker.exists():
        raise TrainingDivergedError(json.loads(marker.read_text())["reason"])


def signlock_trainable(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable (bind ``context`` with ``tune.with_parameters``)."""
    trial_id = tune.get_context().get_trial_id()
    cfg = resolve_trial_config(context, config)
    sweep_dir = Path(context.sweep_dir)
    run_dir = sweep_dir / "runs" / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    start_step = _adopt_checkpoint(run_dir)
    started = _record_attempt(run_dir, max(start_step, 0))
    mlflow_run = TrialRun(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        context.sweep_name,
        cfg.name,
        trial_id,
    )
    mlflow_run.open(flatten_params(cfg.to_dict()))
    faults = [f for f in context.faults if f.trial_name == cfg.name]
    try:
        _check_diverged(run_dir)
        trial = Trial(cfg, run_dir, progress=False)

        def report(row: dict[str, float], saved: Path | None) -> None:
            mlflow_run.log_rows([row])
            for fault in faults:
                if int(row["step"]) == fault.step:
                    _inject(fault, trial, run_dir)
            metrics = {**finite_metrics(row), **running_objectives(trial.rows)}
            if saved is None:
                tune.report(metrics)
                return
            checkpoint = _tune_checkpoint(saved)
            try:
                tune.report(metrics, checkpoint=checkpoint)
            finally:
                shutil.rmtree(checkpoint.path, ignore_errors=True)

        summary = trial.run(report, resume=start_step >= 0)
    except TrainingDivergedError as error:
        (run_dir / DIVERGED_MARKER).write_text(json.dumps({"reason": str(error)}))
        mlflow_run.fail(f"TrainingDivergedError: {error}", run_dir)
        raise
    except BaseException as error:
        mlflow_run.fail(f"{type(error).__name__}: {error}", run_dir)
        raise
    mlflow_run.finish(summary, run_dir)
    timing = {"attempt_started_at": started, "finished_at": time.time()}
    _write_sweep_tables(sweep_dir, cfg, {**summary, **timing}, run_dir)
    tune.report({**finite_metrics(summary), "step": summary["steps"], "finished": 1.0})


def _write_sweep_tables(
    sweep_dir: Path, cfg: TrialConfig, summary: dict[str, Any], run_dir: Path
) -> None:
    flips_path = run_dir / "flips.parquet"
    if flips_path.is_file():
        _write_partition(sweep_dir, "flips", cfg.name, pd.read_parquet(flips_path))
    row = {**flatten_params(cfg.to_dict()), **finite_metrics(summary), "run_dir": str(run_dir)}
    _write_partition(sweep_dir, "summaries", cfg.name, pd.DataFrame([row]))
