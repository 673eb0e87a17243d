"""``signlock analyze``: a sweep's tables and figures under ``<sweep>/analysis/``.

Pure files, returned as :class:`~signlock.analysis.outputs.Outputs`: the CLI logs them to the
sweep's MLflow parent run. Every flag is checked before anything is touched. The outputs are
made in a temporary folder beside ``analysis/`` and swapped in at the end, so a failure leaves
the previous analysis as it was; a partial analysis (``--what lockin`` or ``pareto``) replaces
only the files it recomputes (here and, as the CLI's ``publish`` logs only them, on MLflow).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from numbers import Integral, Real
from pathlib import Path

import pandas as pd

from signlock.analysis import figures
from signlock.analysis.outputs import Outputs
from signlock.analysis.pareto import pareto_front
from signlock.analysis.sweep_data import POOLED, Sweep
from signlock.analysis.tables import lockin_table, seed_summary
from signlock.trainables.errors import ConfigError, SignlockError
from signlock.trainables.files import write_csv, write_parquet
from signlock.trainables.layout import SweepDir

WHATS = ("lockin", "pareto", "all")
# The files each part writes (and so replaces): a partial analysis leaves the others alone.
OUTPUTS = {
    "lockin": ("lockin.csv", "lockin.parquet", "seeds.csv", "seeds.parquet", "tail.png",
               "k_histograms.png", "flips_over_time.png", "hg_vs_*.png"),
    "pareto": ("pareto.csv", "pareto.parquet", "pareto.png"),
}  # fmt: skip

Publish = Callable[[Outputs], None]  # sees the new files (staged) before they replace the old


class NoFinishedTrialsError(SignlockError):
    """Nothing to analyse yet (exit 1)."""

    def __init__(self, sweep: Sweep) -> None:
        super().__init__(
            f"sweep {sweep.name} has no finished trials yet (0 of {sweep.n_planned}): "
            "nothing to analyse"
        )


@dataclass(frozen=True)
class AnalysisRequest:
    """What ``signlock analyze`` was asked for (``y`` None: the sweep's validation metric)."""

    what: str = "all"
    x: str = "flip_mean"
    y: str | None = None
    confidence: float = 0.95
    resamples: int = 1000
    per_tensor_ci: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        return ("lockin", "pareto") if self.what == "all" else (self.what,)


def _check_flags(request: AnalysisRequest) -> None:
    if request.what not in WHATS:
        raise ConfigError("--what", request.what, "one of " + ", ".join(WHATS))
    confidence = request.confidence
    if isinstance(confidence, bool) or not isinstance(confidence, Real):
        raise ConfigError("--confidence", confidence, "a number in (0, 1)")
    if not (math.isfinite(confidence) and 0 < confidence < 1):
        raise ConfigError("--confidence", confidence, "a number in (0, 1)")
    resamples = request.resamples
    if isinstance(resamples, bool) or not isinstance(resamples, Integral) or resamples < 1:
        raise ConfigError("--resamples", resamples, "an integer >= 1")


def metric_names(sweep: Sweep) -> list[str]:
    """What ``--x``/``--y`` may name: the trials' numeric results (not their config fields)."""
    numeric = sweep.trials.select_dtypes("number").columns
    return sorted(str(c) for c in numeric if "." not in str(c))


def _check_metric(sweep: Sweep, name: str, flag: str) -> None:
    allowed = metric_names(sweep)
    if name not in allowed:
        raise ConfigError(flag, name, "a trial metric: " + ", ".join(allowed))


def check_request(sweep: Sweep, request: AnalysisRequest) -> AnalysisRequest:
    """``request`` with ``y`` resolved, after checking every flag against ``sweep``; a sweep
    without finished trials is :class:`NoFinishedTrialsError`. Touches nothing."""
    _check_flags(request)
    resolved = replace(request, y=request.y or sweep.validation_metric)
    if resolved.x == resolved.y:
        raise ConfigError("--y", resolved.y, f"a metric other than --x {resolved.x}")
    if not len(sweep.trials):
        raise NoFinishedTrialsError(sweep)
    _check_metric(sweep, resolved.x, "--x")
    _check_metric(sweep, resolved.y, "--y")
    return resolved


def run_analysis(
    sweep: Sweep,
    *,
    what: str = "all",
    x: str = "flip_mean",
    y: str | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    per_tensor_ci: bool = False,
    publish: Publish | None = None,
) -> Outputs:
    """Tables (CSV and Parquet) and PNG figures of ``sweep``'s finished trials into
    ``<sweep>/analysis/``, with the headline numbers as metrics. ``publish(staged)`` (the CLI:
    log on MLflow) sees the new files before they replace the old ones; if anything fails,
    ``analysis/`` is unchanged."""
    asked = AnalysisRequest(
        what=what, x=x, y=y, confidence=confidence, resamples=resamples,
        per_tensor_ci=per_tensor_ci,
    )  # fmt: skip
    request = check_request(sweep, asked)
    directory = SweepDir(sweep.directory).analysis
    metrics: dict[str, float] = {}
    with _staging(directory) as stage:
        written = _write_outputs(sweep, request, stage, metrics)
        if publish is not None:
            publish(Outputs(stage, tuple(stage / name for name in written), dict(metrics)))
        files = _swap_in(stage, written, directory, request.parts)
    return Outputs(directory, tuple(files), metrics)


def _write_outputs(
    sweep: Sweep, request: AnalysisRequest, stage: Path, metrics: dict[str, float]
) -> list[str]:
    written: list[str] = []
    if "lockin" in request.parts:
        _lockin_outputs(sweep, request, stage, written, metrics)
    if "pareto" in request.parts:
        _pareto_outputs(sweep, request, stage, written, metrics)
    metrics["analysis.trials"] = float(len(sweep.trials))
    metrics["analysis.trials_missing"] = float(sweep.n_missing)
    return written


@contextlib.contextmanager
def _staging(directory: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``directory``, removed afterwards whatever happens."""
    stage = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _owned(name: str, parts: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for part in parts for pattern in OUTPUTS[part])


def _swap_in(stage: Path, names: list[str], directory: Path, parts: tuple[str, ...]) -> list[Path]:
    """Move the new files into ``directory`` (each by an atomic rename) and remove the files of
    the recomputed parts that this analysis no longer writes; the other files stay."""
    directory.mkdir(exist_ok=True)
    stale = [p for p in directory.iterdir() if _owned(p.name, parts) and p.name not in names]
    for name in names:
        os.replace(stage / name, directory / name)
    for path in stale:
        path.unlink(missing_ok=True)
    return [directory / name for name in names]


def _write_table(table: pd.DataFrame, stage: Path, stem: str, written: list[str]) -> None:
    write_csv(table, stage / f"{stem}.csv")
    write_parquet(table, stage / f"{stem}.parquet")
    written += [f"{stem}.csv", f"{stem}.parquet"]


def _figure(figure, stage: Path, stem: str, written: list[str]) -> None:
    figures.save(figure, stage / f"{stem}.png")
    written.append(f"{stem}.png")


def _pareto_outputs(
    sweep: Sweep,
    request: AnalysisRequest,
    stage: Path,
    written: list[str],
    metrics: dict[str, float],
) -> None:
    y = request.y or sweep.validation_metric
    front = pareto_front(sweep.trials, [y, request.x])
    _write_table(front, stage, "pareto", written)
    _figure(figures.pareto_figure(sweep, request.x, y), stage, "pareto", written)
    metrics["analysis.pareto_size"] = float(len(front))


def _lockin_outputs(
    sweep: Sweep,
    request: AnalysisRequest,
    stage: Path,
    written: list[str],
    metrics: dict[str, float],
) -> None:
    lockin = lockin_table(
        sweep,
        confidence=request.confidence,
        resamples=request.resamples,
        per_tensor_ci=request.per_tensor_ci,
    )
    summary = seed_summary(sweep, lockin)
    _write_table(lockin, stage, "lockin", written)
    _write_table(summary, stage, "seeds", written)
    _figure(figures.tail_figure(sweep, lockin), stage, "tail", written)
    _figure(figures.k_histogram_figure(sweep, lockin), stage, "k_histograms", written)
    _figure(figures.flips_over_time_figure(sweep), stage, "flips_over_time", written)
    pooled = lockin[lockin["tensor"] == POOLED].set_index("trial")
    trials = sweep.trials.assign(
        h_hat=sweep.trials["name"].map(pooled["h_hat"]),
        g_hat=sweep.trials["name"].map(pooled["g_hat"]),
    )
    for axis in sweep.figure_axes:
        stem = "hg_vs_" + axis.key.replace(".", "_")
        _figure(figures.hg_figure(sweep, summary, trials, axis), stage, stem, written)
    metrics.update(
        {
            "analysis.h_hat_mean": float(pooled["h_hat"].mean()),
            "analysis.g_hat_mean": float(pooled["g_hat"].mean()),
            "analysis.floating_trials": float((pooled["regime"] == "floating").sum()),
        }
    )
