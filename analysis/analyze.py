"""``signlock analyze``: a sweep's tables and figures under ``<sweep>/analysis/``.

Pure files: the CLI logs them to the sweep's MLflow parent run. Running it again replaces the
outputs (the folder is rewritten), so nothing is ever duplicated.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from signlock.analysis import figures
from signlock.analysis.pareto import pareto_front
from signlock.analysis.sweep_data import POOLED, Sweep
from signlock.analysis.tables import lockin_table, seed_summary
from signlock.trainables.errors import ConfigError

WHATS = ("lockin", "pareto", "all")
OUTPUT_DIR = "analysis"


@dataclass
class AnalysisResult:
    directory: Path
    files: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # headline numbers for MLflow
    n_trials: int = 0
    n_missing: int = 0


def _write_table(table: pd.DataFrame, directory: Path, stem: str, result: AnalysisResult) -> None:
    for suffix, write in ((".csv", table.to_csv), (".parquet", table.to_parquet)):
        path = directory / f"{stem}{suffix}"
        write(path, index=False)
        result.files.append(path)


def _figure(figure, directory: Path, stem: str, result: AnalysisResult) -> None:
    result.files.append(figures.save(figure, directory / f"{stem}.png"))


def _check_metric(sweep: Sweep, name: str, flag: str) -> None:
    if name not in sweep.trials:
        numeric = sorted(c for c in sweep.trials.select_dtypes("number") if "." not in c)
        raise ConfigError(flag, name, "a trial metric: " + ", ".join(numeric))


def run_analysis(
    sweep: Sweep,
    *,
    what: str = "all",
    x: str = "flip_mean",
    y: str | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    per_tensor_ci: bool = False,
) -> AnalysisResult:
    """Tables (CSV and Parquet) and PNG figures of ``sweep``'s finished trials."""
    if what not in WHATS:
        raise ConfigError("--what", what, "one of " + ", ".join(WHATS))
    if not 0 < confidence < 1:
        raise ConfigError("--confidence", confidence, "a number in (0, 1)")
    y = y or sweep.validation_metric
    if len(sweep.trials):
        _check_metric(sweep, x, "--x")
        _check_metric(sweep, y, "--y")
    directory = sweep.directory / OUTPUT_DIR
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    result = AnalysisResult(directory, n_trials=len(sweep.trials), n_missing=sweep.n_missing)
    if not len(sweep.trials):
        return result
    lockin = lockin_table(
        sweep, confidence=confidence, resamples=resamples, per_tensor_ci=per_tensor_ci
    )
    summary = seed_summary(sweep, lockin)
    _write_table(summary, directory, "seeds", result)
    if what in ("lockin", "all"):
        _lockin_outputs(sweep, lockin, summary, directory, result)
    if what in ("pareto", "all"):
        front = pareto_front(sweep.trials, [y, x])
        _write_table(front, directory, "pareto", result)
        _figure(figures.pareto_figure(sweep, x, y), directory, "pareto", result)
        result.metrics["analysis.pareto_size"] = float(len(front))
    result.metrics["analysis.trials"] = float(result.n_trials)
    result.metrics["analysis.trials_missing"] = float(result.n_missing)
    return result


def _lockin_outputs(
    sweep: Sweep,
    lockin: pd.DataFrame,
    summary: pd.DataFrame,
    directory: Path,
    result: AnalysisResult,
) -> None:
    _write_table(lockin, directory, "lockin", result)
    _figure(figures.tail_figure(sweep, lockin), directory, "tail", result)
    _figure(figures.k_histogram_figure(sweep, lockin), directory, "k_histograms", result)
    _figure(figures.flips_over_time_figure(sweep), directory, "flips_over_time", result)
    trials = sweep.trials.assign(
        h_hat=sweep.trials["name"].map(lockin[lockin.tensor == POOLED].set_index("trial")["h_hat"]),
        g_hat=sweep.trials["name"].map(lockin[lockin.tensor == POOLED].set_index("trial")["g_hat"]),
    )
    for axis in sweep.figure_axes:
        stem = "hg_vs_" + axis.key.replace(".", "_")
        _figure(figures.hg_figure(sweep, summary, trials, axis), directory, stem, result)
    pooled = lockin[lockin["tensor"] == POOLED]
    result.metrics.update(
        {
            "analysis.h_hat_mean": float(pooled["h_hat"].mean()),
            "analysis.g_hat_mean": float(pooled["g_hat"].mean()),
            "analysis.floating_trials": float((pooled["regime"] == "floating").sum()),
        }
    )
