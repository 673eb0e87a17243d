"""Where every file of a run directory and of a sweep directory lives: :class:`RunDir` and
:class:`SweepDir` own the names of README.md's "A run directory" and "sweep directory" tables;
no other module spells them (a test greps for it).

Both are small frozen path objects: ``RunDir(path).checkpoint`` is
``path/checkpoints/latest.pt``, ``SweepDir(path).run(name)`` the :class:`RunDir` of one trial.
They say where files are; :mod:`signlock.trainables.files` writes them atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_NAME = "latest.pt"
PREVIOUS_CHECKPOINT_NAME = "previous.pt"


@dataclass(frozen=True)
class _Directory:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class RunDir(_Directory):
    """One trial's run directory (``signlock train``'s ``--run-dir``, or ``runs/<trial>/``)."""

    # written by the trial (signlock.trainables.trainer)
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.parquet"

    @property
    def flips(self) -> Path:
        return self.path / "flips.parquet"

    @property
    def tensor_stats(self) -> Path:
        return self.path / "tensor_stats.parquet"

    @property
    def tensor_metrics(self) -> Path:
        return self.path / "tensor_metrics.parquet"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        """The newest checkpoint; its step is in the ``.json`` beside it."""
        return self.checkpoints / CHECKPOINT_NAME

    @property
    def previous_checkpoint(self) -> Path:
        return self.checkpoints / PREVIOUS_CHECKPOINT_NAME

    # written in a sweep (signlock.orchestrator.trial_runner, the driver, array tasks)
    @property
    def trial_state(self) -> Path:
        return self.path / "trial.json"

    @property
    def scheduler_state(self) -> Path:
        return self.path / "scheduler.json"

    @property
    def attempts(self) -> Path:
        return self.path / "attempts.jsonl"

    @property
    def diverged_marker(self) -> Path:
        return self.path / "diverged.json"

    @property
    def array_error(self) -> Path:
        """Why the trial's last SLURM array task failed."""
        return self.path / "array-error.txt"

    def logged_files(self) -> tuple[Path, ...]:
        """The files a trial's MLflow run holds as artifacts, in the order they are logged."""
        return (
            self.config,
            self.summary,
            self.metrics,
            self.flips,
            self.tensor_stats,
            self.tensor_metrics,
        )


@dataclass(frozen=True)
class SweepDir(_Directory):
    """One sweep's directory (``--storage/NAME``)."""

    @property
    def record(self) -> Path:
        """``signlock-sweep.json``: what the sweep was started with."""
        return self.path / "signlock-sweep.json"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def run(self, trial: str) -> RunDir:
        return RunDir(self.runs / trial)

    def dataset(self, name: str) -> Path:
        """A Hive-partitioned Parquet dataset (``flips``, ``tensor_metrics``, ``summaries``)."""
        return self.path / name

    def partition(self, dataset: str, trial: str) -> Path:
        return self.dataset(dataset) / f"trial={trial}" / "part-0.parquet"

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def pareto_csv(self) -> Path:
        return self.path / "pareto.csv"

    @property
    def ray_log(self) -> Path:
        """Ray's own output (the terminal's with ``--verbose``)."""
        return self.path / "ray.log"

    @property
    def driver_lock(self) -> Path:
        return self.path / ".driver.lock"

    @property
    def analysis(self) -> Path:
        """``signlock analyze``/``report``'s outputs."""
        return self.path / "analysis"

    @property
    def compression(self) -> Path:
        """``signlock compress``'s outputs."""
        return self.path / "compression"

    @property
    def slurm(self) -> Path:
        """submitit's pickles and every SLURM task's logs, one folder per job."""
        return self.path / "slurm"


# the Hive datasets of a sweep directory, written when a trial finishes
FLIPS = "flips"
TENSOR_METRICS = "tensor_metrics"
SUMMARIES = "summaries"
