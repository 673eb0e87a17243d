"""``signlock status``: trials by state and the best so far, read from Tune's experiment state.

Tune writes ``experiment_state-*.json`` in the sweep directory; each trial's public fields
(id, status, config, last result, failures) are plain JSON, so no pickle is ever loaded here.
Trials Tune has not created yet (a grid still being expanded) do not appear.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from signlock.trainables.errors import ConfigError

STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")
SHOWN_METRICS = ("val_ppl", "val_error", "flip_mean", "h_hat", "g_hat")


@dataclass(frozen=True)
class SweepStatus:
    sweep_dir: Path
    n_planned: int | None
    trials: pd.DataFrame

    def counts(self) -> dict[str, int]:
        by_state = self.trials["status"].value_counts() if len(self.trials) else pd.Series()
        return {state: int(by_state.get(state, 0)) for state in STATES}

    def best(self) -> pd.Series | None:
        for metric in ("val_ppl", "val_error"):
            if metric in self.trials and self.trials[metric].notna().any():
                return self.trials.loc[self.trials[metric].idxmin()]
        return None


def _latest_state_file(sweep_dir: Path) -> Path:
    """The newest by the start time in its name (each restore starts a new file; Tune may touch
    older ones afterwards, so modification times do not tell)."""
    files = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not files:
        raise ConfigError("sweep", str(sweep_dir), "a sweep directory Ray Tune has started")
    return files[-1]


def _trial_row(public: dict, runtime: dict) -> dict:
    result = runtime.get("last_result") or {}
    config = public.get("config") or {}
    overrides = config.get("overrides", {}) if isinstance(config, dict) else {}
    row = {
        "trial_id": public["trial_id"],
        "name": overrides.get("name", ""),
        "status": public.get("status", "?"),
        "step": result.get("step", math.nan),
        "failures": runtime.get("num_failures", 0),
    }
    row.update({metric: result.get(metric, math.nan) for metric in SHOWN_METRICS})
    return row


def sweep_status(sweep_dir: Path) -> SweepStatus:
    state = json.loads(_latest_state_file(sweep_dir).read_text())
    rows = [
        _trial_row(json.loads(public), json.loads(runtime))
        for public, runtime in state["trial_data"]
    ]
    record_path = sweep_dir / "signlock-sweep.json"
    n_planned = (
        json.loads(record_path.read_text()).get("n_trials") if record_path.exists() else None
    )
    return SweepStatus(sweep_dir, n_planned, pd.DataFrame(rows))


def format_status(status: SweepStatus) -> str:
    counts = status.counts()
    planned = f" of {status.n_planned} planned" if status.n_planned is not None else ""
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
