"""Sweeps on Ray Tune: launch, resume, and collect results.

A sweep lives in ``<storage>/<name>/``: Ray Tune's experiment directory (its own state and
checkpoints), plus signlock's files beside them::

    signlock-sweep.json   the spec and everything needed to resume (plain JSON)
    runs/<trial>/         each trial's run directory (<trial>: the trial's name)
    flips/trial=<trial>/  sweep-level K histograms (read with pyarrow.dataset, hive partitioning)
    summaries/trial=<trial>/  one row per finished trial: flattened config (strings) + summary
    trials.csv            the final table of trials (also an artifact of the MLflow parent run)
    pareto.csv            the non-dominated trials in (validation metric, flip_mean)

MLflow: one parent run per sweep in experiment ``--experiment`` (default ``signlock``), one child
run per trial (see :mod:`signlock.orchestrator.tracking`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from signlock.orchestrator import tracking
from signlock.orchestrator.status import sweep_status
from signlock.orchestrator.trainable import FaultInjection, SweepContext, signlock_trainable
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.errors import ConfigError
from signlock.trainables.schema import FLIP_OBJECTIVE, RESULT_METRICS, validation_objective

SWEEP_FILE = "signlock-sweep.json"
DEFAULT_EXPERIMENT = "signlock"
FORWARDED_ENV_PREFIX = "SIGNLOCK_"  # e.g. SIGNLOCK_CACHE reaches trials on remote workers


@dataclass(frozen=True)
class SweepOptions:
    """How and where to run a sweep (the CLI's flags)."""

    storage: Path
    tracking_uri: str
    experiment: str = DEFAULT_EXPERIMENT
    address: str | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_failures: int = 2
    checkpoint_every: int | None = None  # None: the trial's own, else ~10 per trial
    checkpoint_keep: int = 2
    faults: tuple[FaultInjection, ...] = field(default_factory=tuple)
    progress: bool = True
    verbose: bool = False

    def validate(self) -> None:
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError("--max-concurrent", self.max_concurrent, "an integer >= 1")
        if self.cpus_per_trial is not None and self.cpus_per_trial <= 0:
            raise ConfigError("--cpus-per-trial", self.cpus_per_trial, "a number > 0")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise ConfigError("--gpus-per-trial", self.gpus_per_trial, "a number >= 0")
        if self.max_failures < 0:
            raise ConfigError("--max-failures", self.max_failures, "an integer >= 0")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError("--checkpoint-every", self.checkpoint_every, "an integer >= 1")


def storage_path(value: str) -> Path:
    """``--storage``: a local or shared-filesystem path (or ``file://`` URI)."""
    if "://" in value and not value.startswith("file://"):
        raise ConfigError(
            "--storage",
            value,
            "a local or shared filesystem path or file:// URI (trials write their run "
            "directories directly, so object stores are not supported)",
        )
    return Path(value.removeprefix("file://")).expanduser().resolve()


def with_search(spec: SweepSpec, search: str, budget: int | None) -> SweepSpec:
    """The spec with ``--search``/``--budget`` applied, validated like a spec file."""
    return replace(spec, search=search, budget=spec.budget if budget is None else budget)


CHECKPOINTS_PER_TRIAL = 10


def with_checkpoints(spec: SweepSpec, every: int | None) -> SweepSpec:
    """Every trial must checkpoint for retries and resume to continue it: ``every`` steps, else
    the base config's own interval, else about ten per trial (a multiple of ``log_every``)."""
    base = spec.base
    if every is None and base.checkpoint_every is not None:
        return spec
    if every is None:
        logs_per_checkpoint = max(1, base.steps // (CHECKPOINTS_PER_TRIAL * base.log_every))
        every = logs_per_checkpoint * base.log_every
    return replace(
        spec,
        base=base.with_overrides({"checkpoint_every": every}),
        base_overrides={**spec.base_overrides, "checkpoint_every": every},
    )


# ---- building the Tuner -------------------------------------------------------------------


def _search_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    samplers = {
        "uniform": lambda a: tune.uniform(a.low, a.high),
        "loguniform": lambda a: tune.loguniform(a.low, a.high),
        "choice": lambda a: tune.choice(list(a.values)),
    }
    space = {axis.key: samplers[axis.kind](axis) for axis in spec.random_axes()}
    if spec.search == "grid":
        space["overrides"] = tune.grid_search(spec.grid_overrides())
    return space


def _objectives(spec: SweepSpec) -> tuple[list[str], list[str]]:
    """Multi-objective Optuna targets: the validation metric and flip_mean, both minimised."""
    return [validation_objective(spec.base.model.kind), FLIP_OBJECTIVE], ["min", "min"]


def _searcher(spec: SweepSpec, seed: int) -> Any:
    if spec.search != "optuna":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    metrics, modes = _objectives(spec)
    sampler = optuna.samplers.NSGAIISampler(seed=seed)
    return OptunaSearch(metric=metrics, mode=modes, sampler=sampler)


def _resources(spec: SweepSpec, options: SweepOptions) -> dict[str, float]:
    cpus = options.cpus_per_trial if options.cpus_per_trial is not None else spec.cpus_per_trial
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else spec.gpus_per_trial
    return {"cpu": cpus, "gpu": gpus}


def trial_name(trial: Any) -> str:
    """Tune's display name: the grid point's name, else the trial id."""
    return str(trial.config.get("overrides", {}).get("name") or trial.trial_id)


def trial_dirname(trial: Any) -> str:
    return f"tune_{trial.trial_id}"


def _trainable(context: SweepContext, resources: dict[str, float]) -> Any:
    from ray import tune

    return tune.with_resources(tune.with_parameters(signlock_trainable, context=context), resources)


def _run_config(name: str, storage: Path, options: SweepOptions, n_trials: int, steps: int) -> Any:
    from ray import tune

    from signlock.orchestrator.progress import SweepProgress

    return tune.RunConfig(
        name=name,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=options.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=options.checkpoint_keep),
        callbacks=[SweepProgress(n_trials, steps, enabled=options.progress)],
        verbose=1 if options.verbose else 0,
    )


LOCAL_RAY = "local"  # ray.init's address that always starts a new cluster owned by this process
RAY_LOG = "ray.log"


def _init_ray(options: SweepOptions) -> None:
    """Attach to ``--address`` (``auto``, ``HOST:PORT``, ``ray://…``) or start this process's own
    local Ray using every core of this machine — never a cluster someone else started here. Ray
    sets each trial's OMP_NUM_THREADS (torch's thread count) to its ``cpus_per_trial``."""
    import ray

    if ray.is_initialized():
        return
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
    ray.init(
        address=options.address or LOCAL_RAY,
        include_dashboard=False,
        log_to_driver=options.verbose,
        runtime_env={"env_vars": env_vars} if env_vars else None,
        configure_logging=options.verbose,
    )


def _send_ray_logs_to(path: Path) -> None:
    """Ray's and Tune's own log records (the ``ray`` logger tree) go to ``path`` instead of the
    terminal, so the terminal shows signlock's progress and results (``--verbose`` keeps Ray's
    output there). Call after importing ray, which installs its terminal handler."""
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


# ---- launch / resume ----------------------------------------------------------------------


def sweep_dir_for(name_or_path: str, storage: Path) -> Path:
    """A sweep by directory path, or by name under ``storage``."""
    candidate = Path(name_or_path).expanduser()
    if (candidate / SWEEP_FILE).is_file():
        return candidate.resolve()
    by_name = storage / name_or_path
    if (by_name / SWEEP_FILE).is_file():
        return by_name
    raise ConfigError("sweep", name_or_path, f"a sweep name under {storage} or a sweep directory")


def _absolute_paths(spec: SweepSpec) -> SweepSpec:
    """Trials run in other working directories: make data paths absolute."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    if spec.base.data.path is not None:
        spec = replace(
            spec, base=spec.base.with_overrides({"data.path": absolute(spec.base.data.path)})
        )
    if spec.base_overrides.get("data.path"):
        overrides = {**spec.base_overrides, "data.path": absolute(spec.base_overrides["data.path"])}
        spec = replace(spec, base_overrides=overrides)
    return spec


def _sweep_params(spec: SweepSpec, n_trials: int) -> dict[str, str]:
    params = {
        "sweep.name": spec.name,
        "sweep.preset": spec.base_preset or "",
        "sweep.search": spec.search,
        "sweep.n_trials": str(n_trials),
        "sweep.seeds": json.dumps(list(spec.seeds)),
    }
    for axis in spec.axes:
        values = list(axis.values) if axis.values else [axis.low, axis.high]
        params[f"sweep.axis.{axis.key}"] = f"{axis.kind} {json.dumps(values)}"
    return params


def launch_sweep(
    spec: SweepSpec, options: SweepOptions, *, name: str | None = None
) -> pd.DataFrame:
    """Validate, create the MLflow parent run, run every trial on Ray Tune; the trials table."""
    options.validate()
    spec = with_checkpoints(_absolute_paths(spec), options.checkpoint_every)
    sweep_name = name or spec.name
    sweep_dir = options.storage / sweep_name
    if (sweep_dir / SWEEP_FILE).exists():
        raise ConfigError(
            "--name",
            sweep_name,
            f"a new sweep name (a sweep already exists in {sweep_dir}; "
            f"`signlock resume {sweep_name}` continues it)",
        )
    n_trials = spec.n_trials()
    if spec.n_duplicates():
        print(
            f"dropped {spec.n_duplicates()} duplicate trial configurations of {spec.name} "
            "(points repeating an earlier one)",
            file=sys.stderr,
        )
    client, experiment_id = _mlflow_experiment(options)
    parent_run_id = tracking.create_sweep_run(
        client, experiment_id, sweep_name, _sweep_params(spec, n_trials), {}
    )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    client.log_dict(parent_run_id, spec.to_dict(), "sweep_spec.json")
    context = SweepContext(
        sweep_name=sweep_name,
        sweep_dir=str(sweep_dir),
        spec=spec.to_dict(),
        tracking_uri=options.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        unique_names=spec.search == "grid" and spec.num_samples == 1,
        faults=options.faults,
    )
    record = {
        "context": context.to_dict(),
        "resources": _resources(spec, options),
        "n_trials": n_trials,
        "options": {
            "max_concurrent": options.max_concurrent,
            "max_failures": options.max_failures,
            "address": options.address,
        },
    }
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(record, indent=2))
    return _fit(spec, context, record, options, restore=None)


def resume_sweep(
    name_or_path: str,
    options: SweepOptions,
    *,
    restart_errored: bool = False,
    resume_errored: bool = True,
) -> pd.DataFrame:
    """``Tuner.restore`` a sweep after a crash or Ctrl-C; finished trials are kept, not rerun."""
    sweep_dir = sweep_dir_for(name_or_path, options.storage)
    record = json.loads((sweep_dir / SWEEP_FILE).read_text())
    context = SweepContext.from_dict(record["context"])
    spec = SweepSpec.from_dict(context.spec)
    # Tune restores its own run config; the MLflow store and faults come with the context.
    options = replace(options, address=options.address or record["options"]["address"])
    tracking.reopen_sweep_run(tracking.MlflowClient(context.tracking_uri), context.parent_run_id)
    restore = {
        "path": str(sweep_dir),
        "resume_errored": resume_errored and not restart_errored,
        "restart_errored": restart_errored,
    }
    return _fit(spec, context, record, options, restore=restore)


def _mlflow_experiment(options: SweepOptions) -> tuple[Any, str]:
    client = tracking.MlflowClient(options.tracking_uri)
    artifact_root = tracking.default_artifact_root(options.tracking_uri, options.storage)
    try:
        experiment_id = tracking.get_or_create_experiment(client, options.experiment, artifact_root)
    except Exception as error:  # an unreachable server or unusable store: fail before Ray
        raise ConfigError(
            "--tracking-uri", options.tracking_uri, f"a reachable MLflow store ({error})"
        ) from error
    return client, experiment_id


def _fit(
    spec: SweepSpec,
    context: SweepContext,
    record: dict[str, Any],
    options: SweepOptions,
    *,
    restore: dict[str, Any] | None,
) -> pd.DataFrame:
    from ray import tune

    resources = record["resources"]
    trainable = _trainable(context, resources)
    ray_log = Path(context.sweep_dir) / RAY_LOG
    quiet = not options.verbose
    if quiet:
        _send_ray_logs_to(ray_log)
    with _stderr_to(ray_log, enabled=quiet):  # Ray's daemons inherit it and write there too
        _init_ray(options)
    steps = spec.base.steps
    if restore is None:
        tuner = tune.Tuner(
            trainable,
            param_space=_search_space(spec),
            tune_config=tune.TuneConfig(
                num_samples=spec.budget if spec.search == "optuna" else spec.num_samples,
                max_concurrent_trials=record["options"]["max_concurrent"],
                search_alg=_searcher(spec, seed=spec.seeds[0]),
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_dirname,
                reuse_actors=True,
            ),
            run_config=_run_config(
                context.sweep_name, options.storage, options, record["n_trials"], steps
            ),
        )
    else:
        tuner = tune.Tuner.restore(trainable=trainable, **restore)
    with ray_log.open("a") as log, contextlib.redirect_stdout(log if quiet else sys.stdout):
        results = tuner.fit()  # Tune prints its experiment box and hints on stdout
    return finalize_sweep(spec, context, results)


# ---- results ------------------------------------------------------------------------------


def _result_row(result: Any) -> dict[str, Any]:
    metrics = result.metrics or {}
    overrides = (result.config or {}).get("overrides", {})
    row: dict[str, Any] = {
        "trial_id": metrics.get("trial_id") or Path(result.path).name.removeprefix("tune_"),
        "name": overrides.get("name", ""),
        "status": "ERROR" if result.error is not None else "TERMINATED",
        "step": metrics.get("step"),
    }
    row.update({key: metrics.get(key, math.nan) for key in RESULT_METRICS})
    sampled = {k: v for k, v in (result.config or {}).items() if k != "overrides"}
    row.update({f"config.{key}": value for key, value in sampled.items()})
    if result.error is not None:
        row["error"] = str(result.error).strip().splitlines()[-1][:300]
    return row


def finalize_sweep(spec: SweepSpec, context: SweepContext, results: Any) -> pd.DataFrame:
    """Write trials.csv / pareto.csv, attach them to the parent run and close it."""
    table = pd.DataFrame([_result_row(result) for result in results])
    sweep_dir = Path(context.sweep_dir)
    client = tracking.MlflowClient(context.tracking_uri)
    if len(table):  # Tune's own record: trials stopped by Ctrl-C are neither done nor errored
        states = sweep_status(sweep_dir).trials.set_index("trial_id")["status"]
        table["status"] = table["trial_id"].map(states).fillna(table["status"])
        names = tracking.trial_names(client, context.experiment_id, context.parent_run_id)
        table["name"] = table["trial_id"].map(names).fillna(table["name"])
    table.to_csv(sweep_dir / "trials.csv", index=False)
    client.log_artifact(context.parent_run_id, str(sweep_dir / "trials.csv"))
    pareto = _pareto(spec, table)
    if pareto is not None:
        pareto.to_csv(sweep_dir / "pareto.csv", index=False)
        client.log_artifact(context.parent_run_id, str(sweep_dir / "pareto.csv"))
    counts = table["status"].value_counts() if len(table) else pd.Series(dtype=int)
    n_errors = int(counts.get("ERROR", 0))
    n_unfinished = len(table) - n_errors - int(counts.get("TERMINATED", 0))
    tracking.close_sweep_run(client, context.parent_run_id, len(table), n_errors, n_unfinished)
    return table


def _pareto(spec: SweepSpec, table: pd.DataFrame) -> pd.DataFrame | None:
    from signlock.analysis.pareto import pareto_front

    objectives, modes = _objectives(spec)
    finished = table[table["status"] == "TERMINATED"] if len(table) else table
    if finished.empty or finished[objectives].isna().all(axis=None):
        return None
    return pareto_front(finished, objectives, modes)


def format_table(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    shown = [c for c in (columns or table.columns) if c in table.columns]
    shown = [c for c in shown if not table[c].isna().all()]
    return table[shown].to_string(index=False) if len(table) else "(no trials)"


def print_results(table: pd.DataFrame, sweep_dir: Path) -> None:
    print(format_table(table))
    unfinished = table[~table["status"].isin(["TERMINATED", "ERROR"])] if len(table) else table
    if len(unfinished):
        print(
            f"\n{len(unfinished)} trials did not finish; continue with "
            f"`signlock resume {sweep_dir}`",
            file=sys.stderr,
        )
    pareto_path = sweep_dir / "pareto.csv"
    if pareto_path.exists():
        print("\nPareto set (validation metric vs flip_mean, both minimised):")
        print(format_table(pd.read_csv(pareto_path)))
    print(f"\nsweep directory: {sweep_dir}", file=sys.stderr)
