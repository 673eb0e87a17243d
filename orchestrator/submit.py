"""Sweeps on SLURM (``--backend slurm``): submit, wait, status, logs, cancel.

The sweep is prepared here (validated, its directory, record and MLflow parent run created) and
then handed to :mod:`signlock.cluster.slurm`, which runs :class:`ClusterEntrypoint` on the head
node of a Ray cluster spanning the allocation. A requeued or re-submitted job runs the same
entrypoint, which continues the sweep from its directory (``Tuner.restore``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from signlock.cluster.slurm_request import SlurmRequest
from signlock.orchestrator import ray_tune, tracking
from signlock.orchestrator.record import SweepRecord
from signlock.orchestrator.sweep import SweepOptions, prepare_sweep, run_sweep, sweep_dir_for
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.errors import ConfigError, SignlockError

POLL_S = 2.0


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
    if request.mode != "ray":
        raise ConfigError("--slurm-mode", request.mode, "ray (array mode is not available yet)")
    slurm.check_request(request)
    record = prepare_sweep(spec, options, name=name)
    sweep_dir = Path(record.context.sweep_dir)
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
    record = SweepRecord.read(sweep_dir)
    recorded = record.slurm_request or {}
    try:
        request = SlurmRequest.from_dict({**recorded, **request_overrides})
    except TypeError:
        raise ConfigError(
            "--partition/--time", None, "both, for a sweep never submitted to SLURM"
        ) from None
    if record.slurm_jobs and not slurm.job_state(record.slurm_jobs[-1]).finished:
        raise ConfigError(
            "sweep",
            name_or_path,
            f"a sweep whose job has ended (job {record.slurm_jobs[-1]} is still queued or "
            f"running; `signlock cancel {record.context.sweep_name}` first)",
        )
    slurm.check_request(request)
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
    record.with_slurm_job(request.to_dict(), job_id).write(sweep_dir)
    return job_id


def latest_job(sweep_dir: Path) -> str:
    record = SweepRecord.read(sweep_dir)
    if not record.slurm_jobs:
        raise ConfigError("sweep", str(sweep_dir), "a sweep submitted with --backend slurm")
    return record.slurm_jobs[-1]


def job_line(sweep_dir: Path) -> str | None:
    """``SLURM job 123: running`` for a sweep submitted to SLURM, else None."""
    from signlock.cluster import slurm

    record = SweepRecord.read(sweep_dir)
    return slurm.job_state(record.slurm_jobs[-1]).describe() if record.slurm_jobs else None


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
    trials = sweep_dir / "trials.csv"
    if not trials.exists() or trials.stat().st_mtime < _submitted_at(sweep_dir, job_id):
        raise SignlockError(
            f"SLURM job {job_id} ended {state.state} without results; "
            f"see `signlock logs {sweep_dir}`"
        )
    return pd.read_csv(trials)


def _submitted_at(sweep_dir: Path, job_id: str) -> float:
    from signlock.cluster import slurm

    folder = sweep_dir / slurm.LOG_FOLDER / job_id
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
    job_id = latest_job(sweep_dir)
    slurm.cancel(job_id)
    client = tracking.MlflowClient(record.context.tracking_uri)
    tracking.mark_sweep_killed(client, record.context.parent_run_id)
    return job_id
