"""The SLURM adapter: every line of signlock that talks to SLURM (submitit, sinfo, squeue,
scontrol, sacct, scancel).

``submit_ray_job`` submits one job with submitit: every node of the allocation runs
:class:`RayAllocationJob`, node 0 starts the Ray head and runs the entrypoint (the Tune driver)
there, the other nodes join as Ray workers (see :mod:`signlock.cluster.ray_cluster`). submitit
sends USR2 before the time limit (and SLURM on preemption): the job then requeues itself, up to
``max_requeues`` times, and the entrypoint continues from what the sweep directory holds.
``submit_array`` submits one array task per item instead (``map_array``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signlock.cluster import ray_cluster
from signlock.cluster.slurm_request import SlurmRequest
from signlock.trainables.errors import ConfigError, SignlockError
from signlock.trainables.layout import SweepDir

FINISHED_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
}  # fmt: skip


class SlurmError(SignlockError):
    """A SLURM command failed."""


# ---- checks before anything is submitted --------------------------------------------------


def _run(command: Sequence[str]) -> str:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SlurmError(f"{' '.join(command)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def check_request(request: SlurmRequest) -> None:
    """Refuse what SLURM would refuse, naming the flag: no sbatch, an unknown partition, GPUs on
    a partition without any."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise ConfigError("--backend", "slurm", "a machine with SLURM's sbatch and sinfo on PATH")
    partitions = {line.strip().rstrip("*") for line in _run(["sinfo", "-h", "-o", "%P"]).split()}
    if request.partition not in partitions:
        raise ConfigError(
            "--partition", request.partition, "one of " + ", ".join(sorted(partitions))
        )
    if request.gpus_per_node > 0:
        gres = _run(["sinfo", "-h", "-p", request.partition, "-o", "%G"]).split()
        if not any("gpu" in entry for entry in gres):
            raise ConfigError(
                "--gpus-per-node",
                request.gpus_per_node,
                f"0 (partition {request.partition} has no GPU gres: {' '.join(gres) or 'none'})",
            )


# ---- submission ---------------------------------------------------------------------------


def executor_parameters(
    request: SlurmRequest, job_name: str, environment: dict[str, str] | None = None
) -> dict[str, Any]:
    """submitit ``AutoExecutor.update_parameters`` arguments for ``request``; ``environment`` is
    exported by the batch script, so every task (node) starts with it."""
    exports = [f"export {key}={shlex.quote(value)}" for key, value in (environment or {}).items()]
    params: dict[str, Any] = {
        "name": job_name,
        "slurm_partition": request.partition,
        "timeout_min": request.timeout_min,
        "nodes": request.nodes,
        "tasks_per_node": 1,  # one process per node: Ray manages the node's CPUs and GPUs
        "slurm_setup": exports + list(request.setup),
    }
    if request.gpus_per_node:
        params["gpus_per_node"] = request.gpus_per_node
    if request.cpus_per_node is not None:
        params["cpus_per_task"] = request.cpus_per_node
    if request.mem is not None:
        params["slurm_mem"] = request.mem
    for key in ("account", "qos", "constraint"):
        if getattr(request, key) is not None:
            params[f"slurm_{key}"] = getattr(request, key)
    if request.mode == "array" and request.array_parallelism is not None:
        params["slurm_array_parallelism"] = request.array_parallelism
    return params


def _executor(
    folder: Path, request: SlurmRequest, job_name: str, environment: dict[str, str] | None = None
) -> Any:
    import submitit

    executor = submitit.AutoExecutor(
        folder=SweepDir(folder).slurm / "%j",
        cluster="slurm",
        slurm_max_num_timeout=request.max_requeues,  # requeues after USR2 (time limit, preemption)
    )
    executor.update_parameters(**executor_parameters(request, job_name, environment))
    return executor


def sbatch_script(
    request: SlurmRequest, sweep_dir: Path, job_name: str, environment: dict[str, str]
) -> str:
    """The batch script submitit would submit for ``request`` (what ``submit_ray_job`` sends)."""
    executor = _executor(sweep_dir, request, job_name, environment)
    command = f"{sys.executable} -u -m submitit.core._submit {executor.folder}"
    return str(executor._executor._make_submission_file_text(command, "signlock"))


class JobTerminated(SystemExit):
    """SLURM sent SIGTERM: the job was cancelled, requeued or preempted."""


def _terminate_on_sigterm() -> None:
    """submitit ignores SIGTERM in its tasks (it waits for USR2); a signlock job stops at once
    instead, unwinding cleanly, since everything it has done is resumable from the sweep
    directory — so ``scancel`` and ``scontrol requeue`` take effect now, not after KillWait."""

    def terminate(signum: int, frame: Any) -> None:
        raise JobTerminated("terminated by SLURM (SIGTERM): cancelled, requeued or preempted")

    signal.signal(signal.SIGTERM, terminate)


class _TerminatesOnSigterm:
    """An array task's function, stopping at SIGTERM like the Ray job does."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def __call__(self, item: Any) -> Any:
        _terminate_on_sigterm()
        return self.function(item)


class RayAllocationJob:
    """What every node of the allocation runs (pickled by submitit into the sweep directory)."""

    def __init__(self, entrypoint: Callable[[str], Any], rendezvous_dir: Path) -> None:
        self.entrypoint = entrypoint
        self.rendezvous_dir = rendezvous_dir

    def __call__(self) -> Any:
        import submitit

        _terminate_on_sigterm()
        job = submitit.JobEnvironment()
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        rendezvous = ray_cluster.Rendezvous(self.rendezvous_dir, str(job.job_id), restart)
        resources = ray_cluster.NodeResources.from_slurm()
        env = dict(os.environ)
        if job.global_rank == 0:
            return ray_cluster.run_head(rendezvous, resources, env, self.entrypoint)
        ray_cluster.run_worker(rendezvous, resources, env)
        return None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on USR2 (time limit, preemption): requeue the same job, which
        continues the sweep from its directory."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submit_ray_job(
    request: SlurmRequest,
    sweep_dir: Path,
    job_name: str,
    entrypoint: Callable[[str], Any],
) -> str:
    """One job: a Ray cluster over the allocation, ``entrypoint(address)`` on its head node."""
    # Ray's token authentication, the same on every node and for the driver (never off).
    auth = ray_cluster.auth_environment(ray_cluster.ensure_auth_token(sweep_dir))
    rendezvous_dir = SweepDir(sweep_dir).slurm
    rendezvous_dir.mkdir(parents=True, exist_ok=True)
    job = _executor(sweep_dir, request, job_name, auth).submit(
        RayAllocationJob(entrypoint, rendezvous_dir)
    )
    return str(job.job_id)


def submit_array(
    request: SlurmRequest,
    sweep_dir: Path,
    job_name: str,
    function: Callable[[Any], Any],
    items: Sequence[Any],
) -> str:
    """One array task per item (``map_array``, at most ``array_parallelism`` running at once);
    returns the array's job id."""
    executor = _executor(sweep_dir, request, job_name)
    jobs = executor.map_array(_TerminatesOnSigterm(function), list(items))
    return str(jobs[0].job_id).split("_")[0]


FOLLOW_UP_TIME = "00:30:00"


def submit_after(
    request: SlurmRequest,
    sweep_dir: Path,
    job_name: str,
    function: Callable[[], Any],
    after_job: str,
) -> str:
    """A small one-CPU job on the same partition that runs ``function`` once ``after_job`` has
    ended, however it ended (``--dependency=afterany``)."""
    small = SlurmRequest(
        partition=request.partition,
        time=FOLLOW_UP_TIME,
        cpus_per_node=1,
        account=request.account,
        qos=request.qos,
        setup=request.setup,
        max_requeues=request.max_requeues,
    )
    executor = _executor(sweep_dir, small, job_name)
    executor.update_parameters(slurm_dependency=f"afterany:{after_job}")
    return str(executor.submit(function).job_id)


# ---- a submitted job ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # SLURM's: PENDING, RUNNING, COMPLETED, … ; UNKNOWN when SLURM forgot the job
    restarts: int = 0
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state.split()[0] in FINISHED_STATES

    def describe(self) -> str:
        state = self.state.lower()
        if self.state == "PENDING" and self.restarts:
            state = f"requeued ({self.restarts}x), pending"
        elif self.restarts:
            state += f" (requeued {self.restarts}x)"
        reason = f" [{self.reason}]" if self.reason and self.reason != "None" else ""
        return f"SLURM job {self.job_id}: {state}{reason}"


def _scontrol_fields(job_id: str) -> dict[str, str]:
    result = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        return {}
    first_task = result.stdout.strip().splitlines()[0]
    return dict(field.split("=", 1) for field in first_task.split() if "=" in field)


def _sacct_state(job_id: str) -> str | None:
    if shutil.which("sacct") is None:
        return None
    result = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[-1].strip() if result.returncode == 0 and lines else None


def job_state(job_id: str) -> JobState:
    """From ``scontrol`` while SLURM remembers the job, else ``sacct`` (when accounting is on)."""
    fields = _scontrol_fields(job_id)
    if fields:
        return JobState(
            job_id,
            fields.get("JobState", "UNKNOWN"),
            int(fields.get("Restarts", "0") or 0),
            fields.get("Reason", ""),
        )
    return JobState(job_id, _sacct_state(job_id) or "UNKNOWN")


def cancel(job_id: str, *, timeout_s: float = 180.0) -> None:
    """``scancel`` the job and wait until SLURM has stopped its processes (squeue drops it
    after its COMPLETING phase), so nothing of it writes on after we return."""
    _run(["scancel", job_id])
    deadline = time.monotonic() + timeout_s
    while _run(["squeue", "-h", "-j", job_id, "-o", "%T"]).strip():
        if time.monotonic() > deadline:
            raise SlurmError(
                f"SLURM job {job_id} still has processes {timeout_s:.0f}s after scancel"
            )
        time.sleep(1.0)


def log_files(sweep_dir: Path, job_id: str) -> list[Path]:
    """The job's stdout/stderr files: one pair per node, or per task of an array job."""
    root = SweepDir(sweep_dir).slurm
    folders = [root / job_id, *sorted(root.glob(f"{job_id}_*"))]
    found = [path for folder in folders for path in sorted(folder.glob(f"{job_id}*_log.*"))]
    return sorted(found, key=lambda path: (path.suffix != ".out", path.name))
