"""How a sweep reaches compute: one :class:`Backend` per way, registered in :data:`BACKENDS`.

The way submitit's executors plug in: each backend submits a prepared sweep, resubmits it,
says the state of its jobs and of its trials, prints their logs and cancels them; the command
line picks one with
:func:`backend_for` and generates its flags from the backend's request dataclass
(:mod:`signlock.orchestrator.commands.flags`). ``signlock-sweep.json`` stores the backend's
name, its request and its jobs (:class:`signlock.trainables.records.Submission`).

=================  =========================================  ================================
name               runs the sweep's driver                    request
=================  =========================================  ================================
``local``          in this process, on its own local Ray      none
``ray-cluster``    in this process, on ``--address``'s Ray    none
``slurm``          in one SLURM job running a Ray cluster     :class:`SlurmRequest`
``slurm-array``    nowhere: one SLURM array task per trial    :class:`SlurmRequest`
=================  =========================================  ================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from signlock.cluster.slurm_request import SlurmRequest
from signlock.trainables.errors import ConfigError
from signlock.trainables.records import SweepRecord

if TYPE_CHECKING:
    import pandas as pd

    from signlock.orchestrator.ray_tune import Restore
    from signlock.orchestrator.sweep import SweepOptions
    from signlock.search_spaces.spec import SweepSpec


@dataclass(frozen=True)
class Submitted:
    """What a submission gave back: the sweep's directory, the job that runs it (None when it
    ran here) and, when it ran here, its trials table."""

    sweep_dir: Path
    job_id: str | None = None
    table: pd.DataFrame | None = None


class Backend(Protocol):
    name: ClassVar[str]
    request_type: ClassVar[type | None]  # a frozen dataclass whose fields are the flags

    def submit(
        self, spec: SweepSpec, options: SweepOptions, request: Any, *, name: str | None
    ) -> Submitted: ...

    def resubmit(
        self, sweep: str, options: SweepOptions, request_fields: dict[str, Any], restore: Restore
    ) -> Submitted: ...

    def state(self, record: SweepRecord) -> str | None: ...

    def trial_states(
        self, sweep_dir: Path, record: SweepRecord, *, driven: bool
    ) -> pd.DataFrame: ...

    def logs(self, sweep_dir: Path, *, follow: bool) -> None: ...

    def cancel(self, sweep_dir: Path) -> str: ...


def _not_submitted(sweep_dir: Path) -> ConfigError:
    return ConfigError("sweep", str(sweep_dir), "a sweep submitted with --backend slurm")


class LocalRay:
    """The driver runs here, on a Ray this process starts for the sweep (bound to 127.0.0.1)."""

    name: ClassVar[str] = "local"
    request_type: ClassVar[type | None] = None

    def submit(
        self, spec: SweepSpec, options: SweepOptions, request: Any, *, name: str | None
    ) -> Submitted:
        from signlock.orchestrator.sweep import launch_sweep

        table = launch_sweep(spec, options, name=name)
        return Submitted(options.storage / (name or spec.name), table=table)

    def resubmit(
        self, sweep: str, options: SweepOptions, request_fields: dict[str, Any], restore: Restore
    ) -> Submitted:
        from signlock.orchestrator.sweep import resume_sweep, sweep_dir_for

        sweep_dir = sweep_dir_for(sweep, options.storage)
        table = resume_sweep(
            sweep,
            options,
            restart_errored=restore.restart_errored,
            resume_errored=restore.resume_errored,
        )
        return Submitted(sweep_dir, table=table)

    def state(self, record: SweepRecord) -> str | None:
        return None  # no job: `status` shows the trials alone

    def trial_states(self, sweep_dir: Path, record: SweepRecord, *, driven: bool) -> pd.DataFrame:
        """Every started trial, from signlock's own records (``driven``: a driver runs now)."""
        from signlock.orchestrator.trial_record import trial_table

        return trial_table(sweep_dir, driven=driven)

    def logs(self, sweep_dir: Path, *, follow: bool) -> None:
        raise _not_submitted(sweep_dir)

    def cancel(self, sweep_dir: Path) -> str:
        raise _not_submitted(sweep_dir)


class RayCluster(LocalRay):
    """The driver runs here, on an existing Ray cluster (``--address``)."""

    name: ClassVar[str] = "ray-cluster"


class SlurmAllocation:
    """One SLURM job: a Ray cluster over its nodes, the driver on the head node."""

    name: ClassVar[str] = "slurm"
    request_type: ClassVar[type | None] = SlurmRequest

    def submit(
        self, spec: SweepSpec, options: SweepOptions, request: Any, *, name: str | None
    ) -> Submitted:
        from signlock.orchestrator import submit

        sweep_dir, job_id = submit.submit_sweep(spec, options, request, name=name)
        return Submitted(sweep_dir, job_id)

    def resubmit(
        self, sweep: str, options: SweepOptions, request_fields: dict[str, Any], restore: Restore
    ) -> Submitted:
        from signlock.orchestrator import submit

        sweep_dir, job_id = submit.resubmit_sweep(sweep, options, request_fields, restore=restore)
        return Submitted(sweep_dir, job_id)

    def state(self, record: SweepRecord) -> str | None:
        from signlock.orchestrator import submit

        return submit.job_line(record)

    def trial_states(self, sweep_dir: Path, record: SweepRecord, *, driven: bool) -> pd.DataFrame:
        from signlock.orchestrator.trial_record import trial_table

        return trial_table(sweep_dir, driven=driven)

    def logs(self, sweep_dir: Path, *, follow: bool) -> None:
        from signlock.orchestrator import submit

        submit.print_logs(sweep_dir, follow=follow)

    def cancel(self, sweep_dir: Path) -> str:
        from signlock.orchestrator import submit

        return submit.cancel_sweep(sweep_dir)


class SlurmArray(SlurmAllocation):
    """One SLURM array task per trial (no Ray), and a follow-up job that closes the sweep."""

    name: ClassVar[str] = "slurm-array"

    def trial_states(self, sweep_dir: Path, record: SweepRecord, *, driven: bool) -> pd.DataFrame:
        """Every planned trial, from its run directory (no driver keeps records here)."""
        from signlock.orchestrator import submit

        return submit.array_trial_table(sweep_dir, record, ended=False)


BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (LocalRay(), RayCluster(), SlurmAllocation(), SlurmArray())
}


def backend_named(name: str) -> Backend:
    if name not in BACKENDS:
        raise ConfigError("--backend", name, "one of " + ", ".join(BACKENDS))
    return BACKENDS[name]


def backend_for(flag: str, *, address: str | None, mode: str | None) -> Backend:
    """The backend the command line asks for: ``--backend local`` with ``--address`` is an
    existing Ray cluster, ``--backend slurm --slurm-mode array`` an array."""
    if flag == "local":
        return BACKENDS["ray-cluster" if address else "local"]
    if flag == "slurm":
        return BACKENDS["slurm-array" if mode == "array" else "slurm"]
    return backend_named(flag)


def backend_of(record: SweepRecord) -> Backend:
    """The backend a sweep was last submitted with."""
    return backend_named(record.submission.backend)
