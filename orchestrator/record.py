"""``signlock-sweep.json``: what a sweep was started with, enough to resume or inspect it.

Written once when a sweep is launched and read by ``resume`` and ``status``; plain JSON, written
and read only through :class:`SweepRecord`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from signlock.orchestrator.trial_runner import SweepContext
from signlock.trainables.errors import ConfigError
from signlock.trainables.files import write_json

SWEEP_FILE = "signlock-sweep.json"


@dataclass(frozen=True)
class SweepRecord:
    context: SweepContext
    resources: dict[str, float]  # per trial: {"cpu": …, "gpu": …}
    n_trials: int
    max_concurrent: int | None
    max_failures: int
    address: str | None  # the Ray address the sweep was started with (None: its own local Ray)
    slurm_request: dict[str, Any] | None = None  # cluster.slurm_request.SlurmRequest.to_dict()
    slurm_jobs: tuple[str, ...] = ()  # every SLURM job that ran the sweep, oldest first

    def with_slurm_job(self, request: dict[str, Any], job_id: str) -> SweepRecord:
        return replace(self, slurm_request=request, slurm_jobs=(*self.slurm_jobs, job_id))

    def to_dict(self) -> dict[str, Any]:
        slurm = {"slurm": {"request": self.slurm_request, "jobs": list(self.slurm_jobs)}}
        return {
            "context": self.context.to_dict(),
            "resources": self.resources,
            "n_trials": self.n_trials,
            "options": {
                "max_concurrent": self.max_concurrent,
                "max_failures": self.max_failures,
                "address": self.address,
            },
            **(slurm if self.slurm_jobs else {}),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SweepRecord:
        options = data["options"]
        slurm = data.get("slurm") or {}
        return SweepRecord(
            context=SweepContext.from_dict(data["context"]),
            resources={key: float(value) for key, value in data["resources"].items()},
            n_trials=int(data["n_trials"]),
            max_concurrent=options.get("max_concurrent"),
            max_failures=int(options["max_failures"]),
            address=options.get("address"),
            slurm_request=slurm.get("request"),
            slurm_jobs=tuple(str(job) for job in slurm.get("jobs", ())),
        )

    def write(self, sweep_dir: Path) -> None:
        write_json(sweep_dir / SWEEP_FILE, self.to_dict(), indent=2)  # `status` may read it now

    @staticmethod
    def read(sweep_dir: Path) -> SweepRecord:
        path = sweep_dir / SWEEP_FILE
        try:
            return SweepRecord.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            allowed = f"a readable {SWEEP_FILE} ({error})"
            raise ConfigError("sweep", str(sweep_dir), allowed) from None
