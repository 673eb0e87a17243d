"""Sweeps on Ray Tune: launch, resume, and collect results.

A sweep lives in ``<storage>/<name>/``: Ray Tune's experiment directory (its own state and
checkpoints), plus signlock's files beside them::

    signlock-sweep.json   the spec and everything needed to resume (plain JSON)
    .driver.lock          held by the one driver of the sweep (sweep_lock)
    runs/<trial>/         each trial's run directory (<trial>: the trial's name), with
                          trial.json / scheduler.json, signlock's own record of its state
    flips/trial=<trial>/  sweep-level K histograms (read with pyarrow.dataset, hive partitioning)
    summaries/trial=<trial>/  one row per finished trial: flattened config (strings) + summary
    trials.csv            the final table of trials (also an artifact of the MLflow parent run)
    pareto.csv            the non-dominated trials in (validation metric, flip_mean)

MLflow: one parent run per sweep in experiment ``--experiment`` (default ``signlock``), one child
run per trial (see :mod:`signlock.orchestrator.tracking`). Ray Tune is reached only through
:mod:`signlock.orchestrator.ray_tune`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from signlock.orchestrator import ray_tune, tracking
from signlock.orchestrator.sweep_lock import driver_lock
from signlock.orchestrator.trial_record import trial_table
from signlock.orchestrator.trial_runner import start_over
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.errors import ConfigError, SignlockError, SweepNotFoundError
from signlock.trainables.files import check_name, write_csv
from signlock.trainables.layout import SweepDir
from signlock.trainables.records import (
    FaultInjection,
    Submission,
    SweepContext,
    SweepRecord,
    read_summaries,
)
from signlock.trainables.schema import FLIP_OBJECTIVE, RESULT_METRICS, validation_objective

DEFAULT_EXPERIMENT = "signlock"


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
    faults: tuple[FaultInjection, ...] = field(default_factory=tuple)
    progress: bool = True
    verbose: bool = False
    connect_timeout: float = ray_tune.CONNECT_TIMEOUT_S  # seconds for --address to answer

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
        if not self.connect_timeout > 0:
            raise ConfigError("--connect-timeout", self.connect_timeout, "a number of seconds > 0")
        writable_storage(self.storage)


def writable_storage(storage: Path) -> Path:
    """``--storage`` as a directory this process can create and write, checked before MLflow or
    Ray start."""
    try:
        storage.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        allowed = f"a directory signlock can create ({error.strerror or error})"
        raise ConfigError("--storage", str(storage), allowed) from None
    if not storage.is_dir() or not os.access(storage, os.W_OK | os.X_OK):
        raise ConfigError("--storage", str(storage), "a directory signlock can write")
    return storage


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


# ---- launch / resume ----------------------------------------------------------------------


def sweep_dir_for(name_or_path: str, storage: Path) -> Path:
    """A sweep by directory path, or by name under ``storage``."""
    candidate = Path(name_or_path).expanduser()
    if SweepDir(candidate).record.is_file():
        return candidate.resolve()
    by_name = storage / name_or_path
    if SweepDir(by_name).record.is_file():
        return by_name
    raise SweepNotFoundError(name_or_path, storage)


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


def objectives(spec: SweepSpec) -> tuple[str, ...]:
    """The sweep's two objectives, both minimised: the validation metric and flip_mean."""
    return validation_objective(spec.base), FLIP_OBJECTIVE


def _resources(spec: SweepSpec, options: SweepOptions) -> dict[str, float]:
    """Per-trial Ray resources: CPUs and GPUs from the flags, else the spec; a CPU trial also
    reserves the planner's predicted peak as Ray ``memory``, so Ray never packs more trials on
    a node than its memory holds (GPU trials' peak is on the GPU, see ``--gpu-memory``)."""
    from signlock.search_spaces.plan import plan_sweep

    cpus = options.cpus_per_trial if options.cpus_per_trial is not None else spec.cpus_per_trial
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else spec.gpus_per_trial
    resources = {"cpu": cpus, "gpu": gpus}
    if not gpus:
        resources["memory"] = float(max(e.cpu_peak for e in plan_sweep(spec).memory.values()))
    return resources


def prepare_sweep(
    spec: SweepSpec, options: SweepOptions, *, name: str | None = None
) -> SweepRecord:
    """Validate, create the sweep directory, its record and its MLflow parent run; nothing runs
    yet (``run_sweep`` runs it here, or a SLURM job runs it on a cluster)."""
    options.validate()
    spec = with_checkpoints(_absolute_paths(spec), options.checkpoint_every)
    sweep_name = check_name("--name", name or spec.name)
    spec = replace(spec, name=sweep_name)  # trials are named after the sweep: NAME-0003
    check_faults(spec, options.faults)
    sweep_dir = options.storage / sweep_name
    if SweepDir(sweep_dir).record.exists():
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
    sweep_dir.chmod(0o750)  # resume lets Tune unpickle what is in here: nobody else writes it
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
    record = SweepRecord(
        context=context,
        resources=_resources(spec, options),
        n_trials=n_trials,
        max_concurrent=options.max_concurrent,
        max_failures=options.max_failures,
        address=options.address,
        submission=Submission("ray-cluster" if options.address else "local"),
    )
    record.write(sweep_dir)
    return record


def check_faults(spec: SweepSpec, faults: Sequence[FaultInjection]) -> None:
    """``--inject-fault`` names a trial of the sweep (a sampled trial's name is its grid
    point's name plus a hash, so the grid point's name is accepted as a prefix)."""
    names = {point["name"] for point in spec.grid_overrides()}
    for fault in faults:
        exact = fault.trial_name in names
        sampled = spec.search != "grid" or spec.num_samples > 1
        if exact or (sampled and any(fault.trial_name.startswith(f"{n}-") for n in names)):
            continue
        shown = ", ".join(sorted(names)[:4]) + (", …" if len(names) > 4 else "")
        raise ConfigError("--inject-fault", fault.trial_name, f"a trial of the sweep ({shown})")


def launch_sweep(
    spec: SweepSpec, options: SweepOptions, *, name: str | None = None
) -> pd.DataFrame:
    """Start Ray (refusing resources it can never give), prepare the sweep and run every trial
    on Ray Tune from this process; the trials table."""
    options.validate()
    start_log = options.storage / f".ray-start-{os.getpid()}.log"
    try:
        ray_tune.start(
            options.address,
            start_log,
            verbose=options.verbose,
            connect_timeout=options.connect_timeout,
        )
        ray_tune.check_resources(_resources(spec, options))
        record = prepare_sweep(spec, options, name=name)
        sweep_dir = Path(record.context.sweep_dir)
        with start_log.open() as source, SweepDir(sweep_dir).ray_log.open("a") as target:
            shutil.copyfileobj(source, target)
    finally:
        start_log.unlink(missing_ok=True)
    return run_sweep(sweep_dir, options)


def run_sweep(
    sweep_dir: Path, options: SweepOptions, restore: ray_tune.Restore | None = None
) -> pd.DataFrame:
    """Run a prepared sweep to the end, holding its driver lock: a new Tuner, or
    ``Tuner.restore`` when ``restore`` is given or Tune already saved the sweep's state (a
    requeued SLURM job); the trials table. A sweep whose Tune state cannot be restored (a full
    disk left it empty) is rebuilt from signlock's own records when it is a grid."""
    record = SweepRecord.read(sweep_dir)
    context = record.context
    spec = SweepSpec.from_dict(context.spec)
    with driver_lock(sweep_dir):
        resuming = restore is not None or ray_tune.has_saved_state(sweep_dir)
        restore = _restore_plan(sweep_dir, spec, restore)
        ray_tune.start(
            options.address,
            SweepDir(sweep_dir).ray_log,
            verbose=options.verbose,
            connect_timeout=options.connect_timeout,
        )
        ray_tune.check_resources(record.resources)
        if restore is not None and restore.restart_errored:
            _start_over_errored(sweep_dir)
        if resuming:
            tracking.reopen_sweep_run(tracking.MlflowClient(context.tracking_uri),
                                      context.parent_run_id)  # fmt: skip
        settings = _tune_settings(spec, record, options)
        ray_tune.fit(spec, context, settings, record.n_trials, restore=restore)
        return finalize_sweep(spec, context, record.n_trials)


def _restore_plan(
    sweep_dir: Path, spec: SweepSpec, restore: ray_tune.Restore | None
) -> ray_tune.Restore | None:
    """How to continue: ``Tuner.restore`` with these options, or None for a new Tuner (nothing
    saved yet, or a grid whose unreadable Tune state is set aside and rebuilt: its trials
    continue from their records and checkpoints, finished ones are not rerun)."""
    if not ray_tune.has_saved_state(sweep_dir):
        return None
    restore = restore or ray_tune.Restore()
    problem = ray_tune.unrestorable_reason(sweep_dir)
    if problem is None:
        return restore
    if spec.search != "grid":
        raise SignlockError(
            f"cannot resume sweep {sweep_dir.name}: Tune's state cannot be restored ({problem}) "
            f"and a {spec.search} search cannot be rebuilt without it"
        )
    aside = ray_tune.set_aside_state(sweep_dir, f"tune-state-unrestorable-{int(time.time())}")
    print(
        f"Tune's state of sweep {sweep_dir.name} cannot be restored ({problem}; moved to "
        f"{aside.name}/): rebuilding the sweep from signlock's records — finished trials are "
        "kept, the others continue from their checkpoints",
        file=sys.stderr,
    )
    return None


def _start_over_errored(sweep_dir: Path) -> None:
    """``--restart-errored``: the user asked to drop errored trials' checkpoints."""
    for name in trials_in_state(sweep_dir, "ERROR"):
        start_over(SweepDir(sweep_dir).run(name).path)


def resume_sweep(
    name_or_path: str,
    options: SweepOptions,
    *,
    restart_errored: bool = False,
    resume_errored: bool = True,
) -> pd.DataFrame:
    """``Tuner.restore`` a sweep after a crash or Ctrl-C; finished trials are kept, not rerun.
    It runs on the Ray cluster it was started with unless ``options.address`` says otherwise."""
    sweep_dir = sweep_dir_for(name_or_path, options.storage)
    record = SweepRecord.read(sweep_dir)
    options = replace(options, address=options.address or record.address)
    restore = ray_tune.Restore(resume_errored=resume_errored, restart_errored=restart_errored)
    return run_sweep(sweep_dir, options, restore)


def _tune_settings(
    spec: SweepSpec, record: SweepRecord, options: SweepOptions
) -> ray_tune.TuneSettings:
    return ray_tune.TuneSettings(
        resources=record.resources,
        max_concurrent=record.max_concurrent,
        max_failures=record.max_failures,
        address=options.address,
        objectives=objectives(spec),
        progress=options.progress,
        verbose=options.verbose,
        finished=tuple(trials_in_state(Path(record.context.sweep_dir), "TERMINATED")),
    )


def trials_in_state(sweep_dir: Path, status: str) -> list[str]:
    """Names of the trials whose record says ``status`` while no driver runs them."""
    table = trial_table(sweep_dir, driven=False)
    return list(table.loc[table["status"] == status, "name"]) if len(table) else []


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


# ---- results ------------------------------------------------------------------------------


def trials_table(states: pd.DataFrame, summaries: pd.DataFrame) -> pd.DataFrame:
    """The scheduler's view of every trial (status, failures, last metrics, error) with each
    finished trial's results taken from its row in ``summaries/``. Integers stay integers."""
    table = states.copy()
    finished = table["name"].isin(summaries.index) & (table["status"] == "TERMINATED")
    if finished.any():
        rows = summaries.loc[table.loc[finished, "name"]]
        table.loc[finished, "step"] = rows["steps"].astype("int64").to_numpy()
        for metric in RESULT_METRICS:
            if metric in rows:
                table.loc[finished, metric] = rows[metric].to_numpy()
    return table


def finalize_sweep(
    spec: SweepSpec,
    context: SweepContext,
    n_planned: int,
    states: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Write trials.csv / pareto.csv, attach them to the parent run and close it. ``states``:
    the scheduler's view of every trial (default: signlock's trial records)."""
    sweep_dir = Path(context.sweep_dir)
    if states is None:
        states = trial_table(sweep_dir, driven=False)
    table = trials_table(states, read_summaries(sweep_dir))
    client = tracking.MlflowClient(context.tracking_uri)
    files = SweepDir(sweep_dir)
    write_csv(table, files.trials_csv)
    client.log_artifact(context.parent_run_id, str(files.trials_csv))
    pareto = _pareto(spec, table)
    if pareto is not None:
        write_csv(pareto, files.pareto_csv)
        client.log_artifact(context.parent_run_id, str(files.pareto_csv))
    counts = table["status"].value_counts() if len(table) else pd.Series(dtype=int)
    if counts.get("INTERRUPTED", 0):
        interrupted = table.loc[table["status"] == "INTERRUPTED", "name"]
        tracking.mark_trials_interrupted(
            client, context.experiment_id, context.parent_run_id, interrupted
        )
    n_errors = int(counts.get("ERROR", 0))
    n_unfinished = max(n_planned, len(table)) - n_errors - int(counts.get("TERMINATED", 0))
    tracking.close_sweep_run(client, context.parent_run_id, len(table), n_errors, n_unfinished)
    return table


def _pareto(spec: SweepSpec, table: pd.DataFrame) -> pd.DataFrame | None:
    from signlock.analysis.pareto import pareto_front

    targets = list(objectives(spec))
    finished = table[table["status"] == "TERMINATED"] if len(table) else table
    if finished.empty or finished[targets].isna().all(axis=None):
        return None
    return pareto_front(finished, targets, ["min"] * len(targets))


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
    pareto_path = SweepDir(sweep_dir).pareto_csv
    if pareto_path.exists():
        print("\nPareto set (validation metric vs flip_mean, both minimised):")
        print(format_table(pd.read_csv(pareto_path)))
    print(f"\nsweep directory: {sweep_dir}", file=sys.stderr)
