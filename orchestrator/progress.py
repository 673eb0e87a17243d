"""A live progress bar for sweeps: training steps done over all trials, with trial counts."""

from __future__ import annotations

import sys
from typing import Any

from ray import tune
from tqdm.auto import tqdm


class SweepProgress(tune.Callback):
    """tqdm over the sweep's total steps (ETA included); postfix: done/running/failed trials."""

    def __init__(self, n_trials: int, steps_per_trial: int, *, enabled: bool = True) -> None:
        self.n_trials = n_trials
        self.steps_per_trial = steps_per_trial
        self.enabled = enabled
        self.steps: dict[str, int] = {}
        self.states: dict[str, str] = {}
        self.bar: Any = None

    def setup(self, **info: Any) -> None:
        self.bar = tqdm(
            total=self.n_trials * self.steps_per_trial,
            desc="sweep",
            unit="step",
            disable=not self.enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def _refresh(self) -> None:
        if self.bar is None:
            return
        self.bar.n = sum(self.steps.values())
        states = list(self.states.values())
        self.bar.set_postfix(
            done=states.count("done"),
            running=states.count("running"),
            failed=states.count("failed"),
            of=self.n_trials,
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = "running"
        self._refresh()

    on_trial_restore = on_trial_start

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.steps[trial.trial_id] = int(result.get("step", 0))
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = "done"
        self.steps[trial.trial_id] = self.steps_per_trial
        self._refresh()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = "failed"
        self._refresh()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.states[trial.trial_id] = "running"
        self._refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.bar is not None:
            self.bar.close()
