"""What a workflow of :mod:`signlock.analysis` made: ``analyze``, ``compress``, ``probe`` and
``report`` each return one :class:`Outputs`, which the command prints and logs to MLflow through
``signlock.orchestrator.tracking.log_outputs`` (analysis itself never talks to MLflow).
Standard library only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Outputs:
    directory: Path  # where the files are (<sweep>/analysis, <sweep>/compression, a probe's --out)
    files: tuple[Path, ...]  # what the command wrote and prints, in order
    metrics: dict[str, float]  # scalars to log (may be empty)
