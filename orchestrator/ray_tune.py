"""The Ray Tune adapter: every line of signlock that touches Ray or Tune.

- :func:`fit` starts (or attaches to) Ray, builds a ``Tuner`` for a new sweep or restores one with
  ``Tuner.restore``, and runs it; :func:`signlock_trainable` wires one trial
  (:func:`signlock.orchestrator.trial_runner.run_sweep_trial`) to ``tune.report``.
- :class:`SweepProgress` is the Tune callback behind the sweep's progress bar.
- :func:`trial_table` reads a sweep's trials back through Tune's public ``ExperimentAnalysis``.

Tune is only the scheduler: a trial's checkpoints live in its run directory on the sweep's
shared storage, so no checkpoint is reported to Tune (that keeps Tune from forcing an experiment
snapshot per checkpoint, and from copying weights a second time). Ray's and Tune's own output goes
to ``<sweep>/ray.log`` unless ``verbose``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from tqdm.auto import tqdm

from signlock.orchestrator.trial_runner import (
    SweepContext,
    resolve_trial_config,
    run_sweep_trial,
    varied_fields,
)
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.errors import ConfigError
from signlock.trainables.schema import RESULT_METRICS

LOCAL_RAY = "local"  # ray.init's address that always starts a new cluster owned by this process
RAY_LOG = "ray.log"
FORWARDED_ENV_PREFIX = "SIGNLOCK_"  # e.g. SIGNLOCK_CACHE reaches trials on remote workers


@dataclass(frozen=True)
class TuneSettings:
    """How Tune runs a sweep's trials."""

    resources: dict[str, float]  # per trial: {"cpu": …, "gpu": …}
    max_concurrent: int | None
    max_failures: int
    address: str | None  # None: this process's own local Ray
    objectives: tuple[str, ...]  # minimised, for Optuna
    progress: bool = True
    verbose: bool = False


@dataclass(frozen=True)
class Restore:
    """``Tuner.restore`` options for resuming a sweep."""

    resume_errored: bool = True
    restart_errored: bool = False


# ---- the trainable ------------------------------------------------------------------------


def signlock_trainable(config: dict[str, Any], context: SweepContext) -> None:
    """Tune function trainable (``context`` bound with ``tune.with_parameters``)."""
    trial_id = tune.get_context().get_trial_id()
    tune.report(run_sweep_trial(config, context, trial_id, tune.report))


def trial_name(trial: Any) -> str:
    """Tune's display name: the grid point's name, else the trial id."""
    return str(trial.config.get("overrides", {}).get("name") or trial.trial_id)


def trial_dirname(trial: Any) -> str:
    return f"tune_{trial.trial_id}"


# ---- progress -----------------------------------------------------------------------------


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


# ---- Ray ----------------------------------------------------------------------------------


def init_ray(address: str | None, *, verbose: bool) -> None:
    """Attach to ``address`` (``auto``, ``HOST:PORT``, ``ray://…``) or start this process's own
    local Ray using every core of this machine — never a cluster someone else started here. Ray
    sets each trial's OMP_NUM_THREADS (torch's thread count) to its ``cpus_per_trial``."""
    import ray

    if ray.is_initialized():
        return
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
    ray.init(
        address=address or LOCAL_RAY,
        include_dashboard=False,
        log_to_driver=verbose,
        runtime_env={"env_vars": env_vars} if env_vars else None,
        configure_logging=verbose,
    )


def _send_ray_logs_to(path: Path) -> None:
    """Ray's and Tune's own log records (the ``ray`` logger tree) go to ``path`` instead of the
    terminal. Call after ``ray.init``, which may install its terminal handler again."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    for old in list(ray_logger.handlers):
        ray_logger.removeHandler(old)
        if isinstance(old, logging.FileHandler):  # a previous sweep's log in this process
            old.close()
    ray_logger.addHandler(handler)
    ray_logger.propagate = False


@contextlib.contextmanager
def _stderr_to(path: Path, *, enabled: bool) -> Iterator[None]:
    """File descriptor 2 points at ``path`` inside the block (child processes started there keep
    it), so what Ray's processes print does not reach the terminal."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("a") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


# ---- the Tuner ----------------------------------------------------------------------------


def _search_space(spec: SweepSpec) -> dict[str, Any]:
    samplers = {
        "uniform": lambda a: tune.uniform(a.low, a.high),
        "loguniform": lambda a: tune.loguniform(a.low, a.high),
        "choice": lambda a: tune.choice(list(a.values)),
    }
    space = {axis.key: samplers[axis.kind](axis) for axis in spec.random_axes()}
    if spec.search == "grid":
        space["overrides"] = tune.grid_search(spec.grid_overrides())
    return space


def _searcher(spec: SweepSpec, objectives: tuple[str, ...]) -> Any:
    """Optuna's NSGA-II over the objectives (all minimised), seeded by the spec's first seed."""
    if spec.search != "optuna":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.NSGAIISampler(seed=spec.seeds[0])
    return OptunaSearch(metric=list(objectives), mode=["min"] * len(objectives), sampler=sampler)


def _new_tuner(
    trainable: Any, spec: SweepSpec, context: SweepContext, settings: TuneSettings, n_trials: int
) -> tune.Tuner:
    sweep_dir = Path(context.sweep_dir)
    return tune.Tuner(
        trainable,
        param_space=_search_space(spec),
        tune_config=tune.TuneConfig(
            num_samples=spec.budget if spec.search == "optuna" else spec.num_samples,
            max_concurrent_trials=settings.max_concurrent,
            search_alg=_searcher(spec, settings.objectives),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep_dir.name,
            storage_path=str(sweep_dir.parent),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=[SweepProgress(n_trials, spec.base.steps, enabled=settings.progress)],
            verbose=1 if settings.verbose else 0,
        ),
    )


def disconnect() -> None:
    """Leave the Ray cluster (before its head stops, so the head need not wait for us)."""
    import ray

    ray.shutdown()


def has_saved_state(sweep_dir: Path) -> bool:
    """Whether Tune saved this sweep's experiment state (so ``Tuner.restore`` can continue it)."""
    return tune.Tuner.can_restore(str(sweep_dir))


def fit(
    spec: SweepSpec,
    context: SweepContext,
    settings: TuneSettings,
    n_trials: int,
    restore: Restore | None = None,
) -> None:
    """Run the sweep's trials on Ray Tune until each has finished or errored (Ctrl-C stops it
    resumably). Read the outcome with :func:`trial_table`."""
    trainable = tune.with_resources(
        tune.with_parameters(signlock_trainable, context=context), settings.resources
    )
    ray_log = Path(context.sweep_dir) / RAY_LOG
    quiet = not settings.verbose
    with _stderr_to(ray_log, enabled=quiet):  # Ray's daemons inherit it and write there too
        init_ray(settings.address, verbose=settings.verbose)
    if quiet:
        _send_ray_logs_to(ray_log)
    if restore is None:
        tuner = _new_tuner(trainable, spec, context, settings, n_trials)
    else:
        tuner = tune.Tuner.restore(
            context.sweep_dir,
            trainable=trainable,
            resume_errored=restore.resume_errored and not restore.restart_errored,
            restart_errored=restore.restart_errored,
        )
    with ray_log.open("a") as log, contextlib.redirect_stdout(log if quiet else sys.stdout):
        tuner.fit()  # Tune prints its experiment box and hints on stdout


# ---- reading a sweep back -----------------------------------------------------------------


def _error_line(trial_path: Path) -> str:
    error_file = trial_path / "error.txt"
    if not error_file.is_file():
        return ""
    lines = error_file.read_text(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


def _trial_row(trial: Any, context: SweepContext) -> dict[str, Any]:
    result = trial.last_result or {}
    cfg = resolve_trial_config(context, trial.config or {})
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "name": cfg.name,
        "status": trial.status,
        "step": result.get("step", math.nan),
        "failures": trial.num_failures,
    }
    row.update({metric: result.get(metric, math.nan) for metric in RESULT_METRICS})
    row.update(varied_fields(context, cfg))
    row["error"] = (_error_line(Path(trial.path)) or None) if trial.status == "ERROR" else None
    return row


def trial_table(sweep_dir: Path, context: SweepContext) -> pd.DataFrame:
    """One row per trial Tune has created, from its persisted experiment state (trials of a grid
    not yet expanded do not appear): id, name, status, last step, failures, last metrics,
    the fields the sweep varies (``config.<key>``) and the error's last line."""
    try:
        analysis = tune.ExperimentAnalysis(str(sweep_dir))
    except ValueError:  # no experiment snapshot yet
        raise ConfigError(
            "sweep", str(sweep_dir), "a sweep directory Ray Tune has started"
        ) from None
    rows = [_trial_row(trial, context) for trial in analysis.trials]
    columns = ["trial_id", "name", "status", "step", "failures", *RESULT_METRICS, "error"]
    table = pd.DataFrame(rows, columns=None if rows else columns)
    return table.sort_values("trial_id", ignore_index=True) if rows else table


def run_tasks(
    function: Callable[[Any], Any],
    jobs: list[Any],
    *,
    address: str | None,
    log_path: Path,
    cpus_per_task: float = 1,
) -> Iterator[Any]:
    """Each job as one Ray task (``cpus_per_task`` CPUs) on the cluster at ``address`` or this
    process's own local Ray; results in the order they finish. Ray's output goes to
    ``log_path``. Disconnects when done or abandoned."""
    import ray

    if not jobs:
        return
    with _stderr_to(log_path, enabled=True):
        init_ray(address, verbose=False)
    _send_ray_logs_to(log_path)
    try:
        remote = ray.remote(num_cpus=cpus_per_task, max_retries=1)(function)
        pending = [remote.remote(job) for job in jobs]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])
    finally:
        disconnect()
