"""``signlock status``: trials by state and the best so far, as Ray Tune last recorded them.

Read through Tune's public ``ExperimentAnalysis`` (see :mod:`signlock.orchestrator.ray_tune`);
trials Tune has not created yet (a grid still being expanded) do not appear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from signlock.orchestrator.record import SweepRecord

STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")
SHOWN_COLUMNS = (
    "trial_id", "name", "status", "step", "failures",
    "val_ppl", "val_error", "flip_mean", "h_hat", "g_hat", "error",
)  # fmt: skip


@dataclass(frozen=True)
class SweepStatus:
    sweep_dir: Path
    n_planned: int
    trials: pd.DataFrame

    def counts(self) -> dict[str, int]:
        by_state = self.trials["status"].value_counts() if len(self.trials) else pd.Series()
        return {state: int(by_state.get(state, 0)) for state in STATES}

    def best(self) -> pd.Series | None:
        for metric in ("val_ppl", "val_error"):
            if metric in self.trials and self.trials[metric].notna().any():
                return self.trials.loc[self.trials[metric].idxmin()]
        return None


def sweep_status(sweep_dir: Path) -> SweepStatus:
    from signlock.orchestrator.ray_tune import trial_table
    from signlock.orchestrator.submit import array_trial_table, is_array
    from signlock.orchestrator.sweep import trials_table
    from signlock.orchestrator.trial_runner import read_summaries

    record = SweepRecord.read(sweep_dir)
    if is_array(record):
        states = array_trial_table(sweep_dir, record, ended=False)
        trials = trials_table(states, read_summaries(sweep_dir))
    else:
        trials = trial_table(sweep_dir, record.context)
    shown = [column for column in SHOWN_COLUMNS if column in trials]
    return SweepStatus(sweep_dir, record.n_trials, trials[shown])


def format_status(status: SweepStatus) -> str:
    counts = status.counts()
    planned = f" of {status.n_planned} planned"
    lines = [
        f"sweep {status.sweep_dir.name}: {len(status.trials)} trials{planned}",
        "  " + "  ".join(f"{state.lower()} {n}" for state, n in counts.items()),
    ]
    best = status.best()
    if best is not None:
        metric = "val_ppl" if not math.isnan(best.get("val_ppl", math.nan)) else "val_error"
        lines.append(
            f"  best so far: {best['name'] or best['trial_id']} {metric}={best[metric]:.4g}"
            f" flip_mean={best['flip_mean']:.3g}"
        )
    if len(status.trials):
        shown = status.trials.dropna(axis="columns", how="all")
        lines += ["", shown.to_string(index=False)]
    return "\n".join(lines)
