"""``signlock status``: trials by state and the best so far, from signlock's own trial records
(:mod:`signlock.orchestrator.trial_record`) — it never reads Tune's pickled state. Trials that
have not started yet are counted against the planned number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from signlock.orchestrator.sweep_lock import driver_holder
from signlock.orchestrator.trial_record import STATES
from signlock.trainables.config import TrialConfig
from signlock.trainables.records import SweepRecord, read_summaries
from signlock.trainables.schema import FLIP_OBJECTIVE, STATUS_METRICS, VAL_PPL, validation_objective

SHOWN_COLUMNS = ("trial_id", "name", "status", "step", "failures", *STATUS_METRICS, "error")


@dataclass(frozen=True)
class SweepStatus:
    sweep_dir: Path
    n_planned: int
    trials: pd.DataFrame
    driver: str | None = None  # who drives the sweep now
    objective: str = VAL_PPL  # the validation metric of the sweep's trial family

    def counts(self) -> dict[str, int]:
        by_state = self.trials["status"].value_counts() if len(self.trials) else pd.Series()
        counts = {state: int(by_state.get(state, 0)) for state in STATES}
        counts["PENDING"] += max(self.n_planned - len(self.trials), 0)  # not started yet
        return counts

    def best(self) -> pd.Series | None:
        """The trial with the lowest validation objective so far (None before any)."""
        metric = self.objective
        if metric in self.trials and self.trials[metric].notna().any():
            return self.trials.loc[self.trials[metric].idxmin()]
        return None


def sweep_status(sweep_dir: Path) -> SweepStatus:
    from signlock.orchestrator.backends import backend_of
    from signlock.orchestrator.sweep import trials_table

    record = SweepRecord.read(sweep_dir)
    driver = driver_holder(sweep_dir)
    states = backend_of(record).trial_states(sweep_dir, record, driven=driver is not None)
    trials = trials_table(states, read_summaries(sweep_dir)) if len(states) else states
    if "checkpoint_step" in trials:
        trials["status"] = [_shown_status(row) for _, row in trials.iterrows()]
    shown = [column for column in SHOWN_COLUMNS if column in trials]
    objective = validation_objective(TrialConfig.from_dict(record.context.spec["base"]))
    return SweepStatus(sweep_dir, record.n_trials, trials[shown], driver, objective)


def _shown_status(row: pd.Series) -> str:
    if row["status"] != "INTERRUPTED":
        return str(row["status"])
    step = row["checkpoint_step"]
    if step < 0:
        return "interrupted (no checkpoint)"
    return f"interrupted (checkpoint at step {step})"


def format_status(status: SweepStatus) -> str:
    counts = status.counts()
    planned = f" of {status.n_planned} planned"
    driven = f"; driven by {status.driver}" if status.driver else ""
    lines = [
        f"sweep {status.sweep_dir.name}: {len(status.trials)} trials started{planned}{driven}",
        "  " + "  ".join(f"{state.lower()} {n}" for state, n in counts.items()),
    ]
    best = status.best()
    if best is not None:
        metric = status.objective
        lines.append(
            f"  best so far: {best['name'] or best['trial_id']} {metric}={best[metric]:.4g}"
            f" {FLIP_OBJECTIVE}={best[FLIP_OBJECTIVE]:.3g}"
        )
    if len(status.trials):
        shown = status.trials.dropna(axis="columns", how="all")
        lines += ["", shown.to_string(index=False)]
    return "\n".join(lines)
