"""Sweeps on SLURM (``--backend slurm``): submit, wait, status, logs, cancel.

The sweep is prepared here (validated, its directory, record and MLflow parent run created) and
then handed to :mod:`signlock.cluster.slurm`, which runs :class:`ClusterEntrypoint` on the head
node of a Ray cluster spanning the allocation. A requeued or re-submitted job runs the same
entrypoint, which continues the sweep from its directory (``Tuner.restore``).

Array mode (``--slurm-mode array``) runs :func:`run_array_trial` — the same trial function as
the Ray path — in one SLURM array task per trial, and :func:`finalize_array_sweep` in a
follow-up job once the array has ended; :func:`array_trial_table` reads the trials' states from
their run directories.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from signlock.cluster.slurm_request import SlurmRequest
from signlock.orchestrator import ray_tune, tracking
from signlock.orchestrator.sweep import (
    SweepOptions,
    finalize_sweep,
    prepare_sweep,
    run_sweep,
    sweep_dir_for,
)
from signlock.orchestrator.sweep_lock import refuse_if_driven
from signlock.orchestrator.trial_record import typed_frame
from signlock.orchestrator.trial_runner import (
    resolve_trial_config,
    run_sweep_trial,
    start_over,
    varied_fields,
)
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.errors import ConfigError, SignlockError
from signlock.trainables.layout import SweepDir
from signlock.trainables.records import SweepContext, SweepRecord, attempts_of, read_summaries
from signlock.trainables.schema import RESULT_METRICS
from signlock.trainables.trainer import checkpoint_step

POLL_S = 2.0
BACKEND, ARRAY_BACKEND = "slurm", "slurm-array"  # their names in signlock.orchestrator.backends


@dataclass(frozen=True)
class ClusterEntrypoint:
    """Runs on the allocation's head node with the address of its Ray cluster (pickled by
    submitit, so only plain data)."""

    sweep_dir: Path
    options: SweepOptions
    restore: ray_tune.Restore | None = None

    def __call__(self, address: str) -> dict[str, int]:
        options = replace(self.options, address=address, progress=False)
        try:
            table = run_sweep(self.sweep_dir, options, self.restore)
        finally:
            ray_tune.disconnect()
        return {str(k): int(v) for k, v in table["status"].value_counts().items()}


def submit_sweep(
    spec: SweepSpec, options: SweepOptions, request: SlurmRequest, *, name: str | None = None
) -> tuple[Path, str]:
    """Check the request against the cluster, prepare the sweep, submit one job; returns the
    sweep directory and the SLURM job id."""
    from signlock.cluster import slurm

    if options.address is not None:
        raise ConfigError("--address", options.address, "no --address with --backend slurm")
    if request.mode == "array":
        _check_array_spec(spec)
    slurm.check_request(request)
    record = prepare_sweep(spec, options, name=name)
    sweep_dir = Path(record.context.sweep_dir)
    if request.mode == "array":
        points = SweepSpec.from_dict(record.context.spec).grid_overrides()
        items = [{"point": point, "fresh": False} for point in points]
        return sweep_dir, _submit_array(record, sweep_dir, request, items)
    return sweep_dir, _submit(record, sweep_dir, options, request, restore=None)


def resubmit_sweep(
    name_or_path: str,
    options: SweepOptions,
    request_overrides: dict[str, Any],
    *,
    restore: ray_tune.Restore,
) -> tuple[Path, str]:
    """``signlock resume NAME --backend slurm``: a new job continuing the sweep, with the request
    it was first submitted with (flags given now replace its fields)."""
    from signlock.cluster import slurm

    sweep_dir = sweep_dir_for(name_or_path, options.storage)
    refuse_if_driven(sweep_dir)
    record = SweepRecord.read(sweep_dir)
    recorded = record.submission.request or {}
    try:
        request = SlurmRequest.from_dict({**recorded, **request_overrides})
    except TypeError:
        raise ConfigError(
            "--partition/--time", None, "both, for a sweep never submitted to SLURM"
        ) from None
    for job in current_jobs(record):
        if not slurm.job_state(job).finished:
            raise ConfigError(
                "sweep",
                name_or_path,
                f"a sweep whose jobs have ended (job {job} is still queued or running; "
                f"`signlock cancel {record.context.sweep_name}` first)",
            )
    slurm.check_request(request)
    if request.mode == "array":
        items = _unfinished_items(sweep_dir, record, restore.restart_errored)
        if not items:
            raise ConfigError("sweep", name_or_path, "a sweep with unfinished trials")
        tracking.reopen_sweep_run(
            tracking.MlflowClient(record.context.tracking_uri), record.context.parent_run_id
        )
        return sweep_dir, _submit_array(record, sweep_dir, request, items)
    return sweep_dir, _submit(record, sweep_dir, options, request, restore=restore)


def _submit(
    record: SweepRecord,
    sweep_dir: Path,
    options: SweepOptions,
    request: SlurmRequest,
    *,
    restore: ray_tune.Restore | None,
) -> str:
    from signlock.cluster import slurm

    entrypoint = ClusterEntrypoint(sweep_dir, options, restore)
    job_name = f"signlock-{record.context.sweep_name}"
    job_id = slurm.submit_ray_job(request, sweep_dir, job_name, entrypoint)
    record.with_job(BACKEND, request.to_dict(), job_id).write(sweep_dir)
    return job_id


def is_array(record: SweepRecord) -> bool:
    return record.submission.backend == ARRAY_BACKEND


def current_jobs(record: SweepRecord) -> tuple[str, ...]:
    """The jobs of the latest submission: the Ray job, or the array and its follow-up job."""
    return record.jobs[-2:] if is_array(record) else record.jobs[-1:]


def latest_job(sweep_dir: Path) -> str:
    """The job whose end is the sweep's end (in array mode: the follow-up job)."""
    record = SweepRecord.read(sweep_dir)
    if not record.jobs:
        raise ConfigError("sweep", str(sweep_dir), "a sweep submitted with --backend slurm")
    return record.jobs[-1]


def job_line(record: SweepRecord) -> str | None:
    """``SLURM job 123: running`` for a sweep submitted to SLURM (its array and follow-up job in
    array mode), else None."""
    from signlock.cluster import slurm

    lines = [slurm.job_state(job).describe() for job in current_jobs(record)]
    if is_array(record) and lines:
        lines[0] = lines[0].replace("SLURM job", "SLURM array job", 1)
    return "\n".join(lines) if lines else None


def wait_for_job(sweep_dir: Path, *, poll_s: float = POLL_S) -> pd.DataFrame:
    """Block until the sweep's latest job has ended, telling each state change on stderr; the
    trials table the job wrote."""
    from signlock.cluster import slurm

    job_id = latest_job(sweep_dir)
    last = ""
    while True:
        state = slurm.job_state(job_id)
        line = state.describe()
        if line != last:
            print(line, file=sys.stderr)
            last = line
        if state.finished or state.state == "UNKNOWN":
            break
        time.sleep(poll_s)
    trials = SweepDir(sweep_dir).trials_csv
    if not trials.exists() or trials.stat().st_mtime < _submitted_at(sweep_dir, job_id):
        raise SignlockError(
            f"SLURM job {job_id} ended {state.state} without results; "
            f"see `signlock logs {sweep_dir}`"
        )
    return pd.read_csv(trials)


def _submitted_at(sweep_dir: Path, job_id: str) -> float:

    folder = SweepDir(sweep_dir).slurm / job_id
    pickles = list(folder.glob("*_submitted.pkl"))
    return min((p.stat().st_mtime for p in pickles), default=0.0)


def print_logs(sweep_dir: Path, *, follow: bool = False, poll_s: float = 1.0) -> None:
    """The latest job's stdout and stderr (every task's); ``follow``: until the job ends."""
    from signlock.cluster import slurm

    job_id = latest_job(sweep_dir)
    offsets: dict[Path, int] = {}
    while True:
        for path in slurm.log_files(sweep_dir, job_id):
            with path.open("rb") as handle:
                handle.seek(offsets.get(path, 0))
                chunk = handle.read()
            if chunk:
                if path not in offsets:
                    print(f"==> {path} <==", flush=True)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            offsets[path] = offsets.get(path, 0) + len(chunk)
        if not follow or slurm.job_state(job_id).finished:
            return
        time.sleep(poll_s)


def cancel_sweep(sweep_dir: Path) -> str:
    """``scancel`` the sweep's job; trials keep their checkpoints and the MLflow parent run is
    marked KILLED, so ``signlock resume … --backend slurm`` continues it."""
    from signlock.cluster import slurm

    record = SweepRecord.read(sweep_dir)
    jobs = current_jobs(record)
    if not jobs:
        raise ConfigError("sweep", str(sweep_dir), "a sweep submitted with --backend slurm")
    for job in jobs:  # array mode: the follow-up job too, so it does not close the sweep
        slurm.cancel(job)
    client = tracking.MlflowClient(record.context.tracking_uri)
    tracking.mark_sweep_killed(client, record.context.parent_run_id)
    return jobs[0]


# ---- array mode: one SLURM array task per trial, no Ray ----------------------------------


def _array_trial_id(name: str) -> str:
    return f"array-{name}"  # stable: a re-submitted task continues the trial's checkpoint


def run_array_trial(item: dict[str, Any], context: SweepContext) -> dict[str, float]:
    """One array task: the same trial function as the Ray path, reporting to nobody."""
    threads = os.environ.get("SLURM_CPUS_PER_TASK")
    if threads:
        torch.set_num_threads(int(threads))
    config = {"overrides": item["point"]}
    name = resolve_trial_config(context, config).name
    run_files = SweepDir(Path(context.sweep_dir)).run(name)
    run_dir = run_files.path
    run_dir.mkdir(parents=True, exist_ok=True)
    run_files.array_error.unlink(missing_ok=True)
    if item.get("fresh"):
        start_over(run_dir)
    try:
        return run_sweep_trial(config, context, _array_trial_id(name), lambda metrics: None)
    except BaseException as error:
        run_files.array_error.write_text(f"{type(error).__name__}: {error}"[:300])
        raise


def array_trial_table(sweep_dir: Path, record: SweepRecord, *, ended: bool) -> pd.DataFrame:
    """Every planned trial of an array sweep, from its run directory: TERMINATED once its
    summary exists, ERROR when its task failed (or, once the array has ``ended``, stopped before
    finishing), RUNNING when started, else PENDING."""
    context = record.context
    finished = set(read_summaries(sweep_dir).index)
    rows = []
    for point in SweepSpec.from_dict(context.spec).grid_overrides():
        cfg = resolve_trial_config(context, {"overrides": point})
        run_files = SweepDir(sweep_dir).run(cfg.name)
        attempts = attempts_of(run_files.path)
        error_file = run_files.array_error
        error = error_file.read_text() if error_file.exists() else None
        if cfg.name in finished:
            status, error = "TERMINATED", None
        elif error is not None:
            status = "ERROR"
        elif attempts and ended:
            status, error = "ERROR", "the array task ended before the trial finished"
        else:
            status = "RUNNING" if attempts else "PENDING"
        row = {
            "trial_id": _array_trial_id(cfg.name),
            "name": cfg.name,
            "status": status,
            "step": max(checkpoint_step(run_files.checkpoint), 0),
            "failures": max(len(attempts) - 1, 0),
        }
        row.update({metric: math.nan for metric in RESULT_METRICS})
        row.update(varied_fields(context, cfg))
        rows.append({**row, "error": error})
    return typed_frame(rows, list(rows[0]) if rows else ["trial_id", "name", "status"])


def finalize_array_sweep(sweep_dir: Path) -> dict[str, int]:
    """The array's follow-up job: trials.csv, pareto.csv and the parent run, as the Ray path
    writes them."""
    record = SweepRecord.read(sweep_dir)
    spec = SweepSpec.from_dict(record.context.spec)
    states = array_trial_table(sweep_dir, record, ended=True)
    table = finalize_sweep(spec, record.context, record.n_trials, states)
    return {str(k): int(v) for k, v in table["status"].value_counts().items()}


def _check_array_spec(spec: SweepSpec) -> None:
    if spec.search != "grid" or spec.random_axes() or spec.num_samples != 1:
        raise ConfigError(
            "--slurm-mode",
            "array",
            "a grid spec without random axes (Optuna and sampling need Ray Tune's driver: "
            "use --slurm-mode ray)",
        )


def _submit_array(
    record: SweepRecord, sweep_dir: Path, request: SlurmRequest, items: list[dict[str, Any]]
) -> str:
    from signlock.cluster import slurm

    name = f"signlock-{record.context.sweep_name}"
    trial = functools.partial(run_array_trial, context=record.context)
    array_id = slurm.submit_array(request, sweep_dir, name, trial, items)
    finalize = functools.partial(finalize_array_sweep, sweep_dir)
    final_id = slurm.submit_after(request, sweep_dir, f"{name}-finalize", finalize, array_id)
    record = record.with_job(ARRAY_BACKEND, request.to_dict(), array_id)
    record.with_job(ARRAY_BACKEND, request.to_dict(), final_id).write(sweep_dir)
    return array_id


def _unfinished_items(sweep_dir: Path, record: SweepRecord, restart_errored: bool) -> list[dict]:
    states = array_trial_table(sweep_dir, record, ended=True).set_index("name")
    points = SweepSpec.from_dict(record.context.spec).grid_overrides()
    items = []
    for point in points:
        name = resolve_trial_config(record.context, {"overrides": point}).name
        status = states.loc[name, "status"]
        if status != "TERMINATED":
            items.append({"point": point, "fresh": restart_errored and status == "ERROR"})
    return items
