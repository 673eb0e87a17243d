"""The plain records of a sweep, readable without torch, Ray or MLflow.

:class:`SweepContext` is what every trial of a sweep needs besides its own overrides,
:class:`SweepRecord` is ``signlock-sweep.json`` (written once when a sweep is launched, read by
``resume``, ``status`` and ``analyze``), :class:`Submission` is which backend ran it, with which
request and jobs. :func:`write_partition`/:func:`read_summaries` are the sweep's Hive-partitioned
Parquet datasets. This module imports only the standard library, pandas and pyarrow (a contract
in ``.importlinter`` checks it), so loading a sweep costs no framework import.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as pads

from signlock.trainables.errors import ConfigError
from signlock.trainables.files import write_json, write_parquet
from signlock.trainables.layout import SUMMARIES, RunDir, SweepDir

FAULT_KINDS = ("raise", "nan", "hang")
SWEEP_FILE = SweepDir(Path()).record.name


@dataclass(frozen=True)
class FaultInjection:
    """Make trial ``trial_name`` fail once at ``step``: ``raise`` an exception (a crashed worker),
    poison its weights with NaN (a diverging run, caught by the trial's own check) or ``hang``
    (a stuck worker: no more progress until something kills it)."""

    trial_name: str
    step: int
    kind: str = "raise"

    @staticmethod
    def parse(text: str) -> FaultInjection:
        """``NAME:STEP[:raise|nan|hang]`` (NAME may itself contain colons)."""
        parts = text.split(":")
        kind = parts.pop() if len(parts) >= 3 and parts[-1] in FAULT_KINDS else "raise"
        step = parts.pop() if len(parts) >= 2 else ""
        name = ":".join(parts)
        if not name or not step.isdigit():
            raise ConfigError("--inject-fault", text, "TRIAL_NAME:STEP[:raise|nan|hang]")
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


@dataclass(frozen=True)
class Submission:
    """Which backend (``signlock.orchestrator.backends``) ran the sweep last, the request it
    was given (a dict of its request dataclass's fields, None without one) and every job that
    ran the sweep, oldest first."""

    backend: str = "local"
    request: dict[str, Any] | None = None
    jobs: tuple[str, ...] = ()

    def with_job(self, backend: str, request: dict[str, Any], job_id: str) -> Submission:
        return Submission(backend, request, (*self.jobs, job_id))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.backend, "request": self.request, "jobs": list(self.jobs)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Submission:
        jobs = tuple(str(job) for job in data.get("jobs", ()))
        return Submission(str(data["name"]), data.get("request"), jobs)

    @staticmethod
    def from_legacy(data: dict[str, Any]) -> Submission:
        """A record written before backends were named: a ``slurm`` section or none."""
        slurm = data.get("slurm")
        if not slurm:
            address = (data.get("options") or {}).get("address")
            return Submission("ray-cluster" if address else "local")
        request = slurm.get("request") or {}
        backend = "slurm-array" if request.get("mode") == "array" else "slurm"
        return Submission(backend, request, tuple(str(job) for job in slurm.get("jobs", ())))


@dataclass(frozen=True)
class SweepRecord:
    context: SweepContext
    resources: dict[str, float]  # per trial: {"cpu": …, "gpu": …}
    n_trials: int
    max_concurrent: int | None
    max_failures: int
    address: str | None  # the Ray address the sweep was started with (None: its own local Ray)
    submission: Submission = field(default_factory=Submission)

    @property
    def jobs(self) -> tuple[str, ...]:
        return self.submission.jobs

    def with_job(self, backend: str, request: dict[str, Any], job_id: str) -> SweepRecord:
        return replace(self, submission=self.submission.with_job(backend, request, job_id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context.to_dict(),
            "resources": self.resources,
            "n_trials": self.n_trials,
            "options": {
                "max_concurrent": self.max_concurrent,
                "max_failures": self.max_failures,
                "address": self.address,
            },
            "backend": self.submission.to_dict(),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SweepRecord:
        options = data["options"]
        backend = data.get("backend")
        submission = Submission.from_dict(backend) if backend else Submission.from_legacy(data)
        return SweepRecord(
            context=SweepContext.from_dict(data["context"]),
            resources={key: float(value) for key, value in data["resources"].items()},
            n_trials=int(data["n_trials"]),
            max_concurrent=options.get("max_concurrent"),
            max_failures=int(options["max_failures"]),
            address=options.get("address"),
            submission=submission,
        )

    def write(self, sweep_dir: Path) -> None:
        write_json(SweepDir(sweep_dir).record, self.to_dict(), indent=2)  # `status` may read it

    @staticmethod
    def read(sweep_dir: Path) -> SweepRecord:
        path = SweepDir(sweep_dir).record
        try:
            return SweepRecord.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            allowed = f"a readable {path.name} ({error})"
            raise ConfigError("sweep", str(sweep_dir), allowed) from None


def write_partition(sweep_dir: Path, dataset: str, trial: str, table: pd.DataFrame) -> None:
    """Hive-partitioned ``<dataset>/trial=<name>/part-0.parquet``, replaced atomically."""
    write_parquet(table, SweepDir(sweep_dir).partition(dataset, trial))


def read_summaries(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's ``summaries/`` dataset, one row per finished trial, indexed by trial name."""
    directory = SweepDir(sweep_dir).dataset(SUMMARIES)
    if not directory.is_dir():
        return pd.DataFrame(index=pd.Index([], name="trial"))
    table = pads.dataset(directory, format="parquet", partitioning="hive").to_table()
    frame = table.to_pandas()
    frame["trial"] = frame["trial"].astype(str)
    return frame.set_index("trial")


def attempts_of(run_dir: Path) -> list[dict[str, Any]]:
    """The trial's starts so far (``attempts.jsonl``), oldest first."""
    log = RunDir(run_dir).attempts
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# ---- columns read back as text (MLflow params, a sweep's flattened configs: str(value)) ----

MISSING_TEXT = ("", "None", "null", "nan", "NaN", "<NA>")
_INTEGER = r"[+-]?\d+"
_BOOLEANS = {"True": True, "False": False, "true": True, "false": False}


def typed_values(values: pd.Series) -> pd.Series:
    """Values stored as text (MLflow params, a sweep's flattened configs: ``str(value)``) back
    as what they were: a column of integers becomes Int64, of numbers float64, of True/False
    boolean, with ``None``/``nan`` as missing; a column holding anything else is left as it is,
    and one with no value at all becomes float NaN."""
    missing = values.isna() | values.astype("string").isin(MISSING_TEXT).fillna(True)
    text = values[~missing].astype("string").str.strip()
    if text.empty:
        return pd.Series(float("nan"), index=values.index, dtype="float64")
    numbers = pd.to_numeric(text, errors="coerce")
    if text.str.fullmatch(_INTEGER).all() and numbers.dtype.kind == "i":  # not beyond int64
        return _with_missing(numbers, missing, "Int64")
    if numbers.notna().all():
        return _with_missing(numbers.astype("float64"), missing, "float64")
    if text.isin(list(_BOOLEANS)).all():
        return _with_missing(text.map(_BOOLEANS), missing, "boolean")
    return values


def _with_missing(present: pd.Series, missing: pd.Series, dtype: str) -> pd.Series:
    out = pd.Series(pd.NA if dtype != "float64" else float("nan"), index=missing.index)
    out = out.astype(dtype)
    out[~missing] = present.astype(dtype)
    return out


def as_integers(values: pd.Series) -> pd.Series:
    """A float column of whole numbers (NaN for missing) as Int64; anything else unchanged."""
    numbers = pd.to_numeric(values, errors="coerce")
    present = numbers.dropna()
    if values.notna().sum() != len(present) or not (present % 1 == 0).all():
        return values
    return numbers.astype("Int64")
