"""The Ray Tune adapter: every line of signlock that touches Ray or Tune.

- :func:`fit` starts (or attaches to) Ray, builds a ``Tuner`` for a new sweep or restores one with
  ``Tuner.restore``, and runs it; :func:`signlock_trainable` wires one trial
  (:func:`signlock.orchestrator.trial_runner.run_sweep_trial`) to ``tune.report``.
- :class:`SweepProgress` is the Tune callback behind the sweep's progress bar;
  :class:`TrialRecorder` writes each trial's Tune status into signlock's own record
  (:mod:`signlock.orchestrator.trial_record`), which is what ``status`` and ``trials.csv`` read:
  nothing outside ``resume`` ever decodes Tune's pickled state.
- :func:`init_ray` starts this process's own Ray on 127.0.0.1 only, with token authentication
  and no dashboard, or attaches to a cluster that answers within a bounded time;
  :func:`check_resources` refuses trials no node of it can ever hold.

Tune is only the scheduler: a trial's checkpoints live in its run directory on the sweep's
shared storage, so no checkpoint is reported to Tune (that keeps Tune from forcing an experiment
snapshot per checkpoint, and from copying weights a second time). Ray's and Tune's own output goes
to ``<sweep>/ray.log`` unless ``verbose``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from tqdm.auto import tqdm

from signlock.orchestrator.trial_record import SchedulerState
from signlock.orchestrator.trial_runner import resolve_trial_config, run_sweep_trial
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.errors import ConfigError, UsageError
from signlock.trainables.layout import SweepDir
from signlock.trainables.records import SweepContext

LOCAL_RAY = "local"  # ray.init's address that always starts a new cluster owned by this process
FORWARDED_ENV_PREFIX = "SIGNLOCK_"  # e.g. SIGNLOCK_CACHE reaches trials on remote workers
CONNECT_TIMEOUT_S = 30.0
# Ray uses the loopback address as the node's address (and binds there) when clusters are off.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}


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
    finished: tuple[str, ...] = ()  # names of trials that finished before this run


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
    """tqdm over the sweep's total steps (ETA included); postfix: done/running/failed trials.
    Trials are counted by name, so those finished before a resume count as done."""

    def __init__(
        self,
        n_trials: int,
        steps_per_trial: int,
        name_of: Callable[[Any], str],
        *,
        finished: Iterable[str] = (),
        enabled: bool = True,
    ) -> None:
        self.n_trials = n_trials
        self.steps_per_trial = steps_per_trial
        self.name_of = name_of
        self.enabled = enabled
        self.steps: dict[str, int] = dict.fromkeys(finished, steps_per_trial)
        self.states: dict[str, str] = dict.fromkeys(finished, "done")
        self.bar: Any = None

    def setup(self, **info: Any) -> None:
        self.bar = tqdm(
            total=self.n_trials * self.steps_per_trial,
            initial=sum(self.steps.values()),
            desc="sweep",
            unit="step",
            disable=not self.enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self._refresh()

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

    def _set(self, trial: Any, state: str, step: int | None = None) -> None:
        name = self.name_of(trial)
        self.states[name] = state
        if step is not None:
            self.steps[name] = step
        self._refresh()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._set(trial, "running")

    on_trial_restore = on_trial_start

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._set(
            trial, self.states.get(self.name_of(trial), "running"), int(result.get("step", 0))
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._set(trial, "done", self.steps_per_trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._set(trial, "failed")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._set(trial, "running")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class TrialRecorder(tune.Callback):
    """Writes each trial's Tune status to ``runs/<trial>/scheduler.json`` (see
    :mod:`signlock.orchestrator.trial_record`)."""

    def __init__(self, runs: Path, name_of: Callable[[Any], str]) -> None:
        self.runs = runs
        self.name_of = name_of

    def _write(self, trial: Any, status: str) -> None:
        run_dir = self.runs / self.name_of(trial)
        SchedulerState(trial.trial_id, status, int(trial.num_failures)).write(run_dir)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "RUNNING")

    on_trial_restore = on_trial_start
    on_trial_recover = on_trial_start

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "ERROR")


# ---- Ray ----------------------------------------------------------------------------------


def init_ray(
    address: str | None, *, verbose: bool, connect_timeout: float = CONNECT_TIMEOUT_S
) -> None:
    """Attach to ``address`` (``auto``, ``HOST:PORT``, ``ray://…``; refused in one line when it
    does not answer within ``connect_timeout`` seconds) or start this process's own local Ray
    using every core of this machine — never a cluster someone else started here — bound to
    127.0.0.1 only, with token authentication and no dashboard. Ray sets each trial's
    OMP_NUM_THREADS (torch's thread count) to its ``cpus_per_trial``."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        _loopback_only()
    else:
        _wait_for_address(address, connect_timeout)
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
    try:
        ray.init(
            address=address or LOCAL_RAY,
            include_dashboard=False,
            log_to_driver=verbose,
            runtime_env={"env_vars": env_vars} if env_vars else None,
            configure_logging=verbose,
        )
    except ConnectionError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "no Ray cluster"
        raise ConfigError("--address", address, f"a running Ray cluster ({first})") from None


def _loopback_only() -> None:
    """This process's own Ray: every server on 127.0.0.1, token authentication set explicitly
    (read by the processes Ray starts, and by this one once its config is reloaded)."""
    import ray._private.ray_constants as ray_constants
    from ray._raylet import Config

    os.environ.update(LOOPBACK_ONLY_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read again by ray.init to pick the node's address
    Config.initialize("")


def _ray_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port a Ray address names (None for ``auto``, found by Ray itself)."""
    if address == "auto":
        return None
    host_port = address.removeprefix("ray://").rsplit(":", 1)
    if len(host_port) != 2 or not host_port[1].isdigit():
        raise ConfigError("--address", address, "auto, HOST:PORT or ray://HOST:PORT")
    return host_port[0], int(host_port[1])


def _wait_for_address(address: str, timeout: float) -> None:
    """Wait until the cluster's port accepts a connection, at most ``timeout`` seconds."""
    endpoint = _ray_endpoint(address)
    if endpoint is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(endpoint, timeout=min(5.0, timeout)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                allowed = (
                    f"a Ray cluster answering within {timeout:g} s ({error.strerror or error})"
                )
                raise ConfigError("--address", address, allowed) from None
            time.sleep(0.5)


def check_resources(resources: dict[str, float]) -> None:
    """Refuse (one line) per-trial resources that no node of the cluster can ever hold, so a
    sweep never waits forever for them."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    wanted = {"CPU": resources.get("cpu", 0), "GPU": resources.get("gpu", 0)}
    wanted["memory"] = resources.get("memory", 0)
    if any(all(node.get(key, 0) >= need for key, need in wanted.items()) for node in nodes):
        return
    largest = {key: max((node.get(key, 0) for node in nodes), default=0) for key in wanted}
    for key, flag in (("GPU", "--gpus-per-trial"), ("CPU", "--cpus-per-trial")):
        if wanted[key] > largest[key]:
            allowed = f"at most {largest[key]:g} (the most {key}s any node of the cluster has)"
            raise ConfigError(flag, wanted[key], allowed)
    gib = 2**30
    allowed = f"at most {largest['memory'] / gib:.1f} GiB (the most memory any node has for Ray)"
    raise ConfigError("trial memory (the planner's CPU peak)", f"{wanted['memory'] / gib:.1f} GiB",
                      allowed)  # fmt: skip


class _LogFileHandler(logging.FileHandler):
    """A log file that never prints a traceback on the terminal when it cannot be written (a
    full disk is reported once, by what failed to save)."""

    def handleError(self, record: logging.LogRecord) -> None:
        return


def _send_ray_logs_to(path: Path) -> None:
    """Ray's and Tune's own log records (the ``ray`` logger tree) go to ``path`` instead of the
    terminal. Call after ``ray.init``, which may install its terminal handler again."""
    handler = _LogFileHandler(path)
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


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that survives pickling: Tune pickles the searcher into `tuner.pkl` and into its
    searcher checkpoints, and Optuna 5.1's genetic samplers hold a `threading.Lock`."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def _searcher(spec: SweepSpec, objectives: tuple[str, ...]) -> Any:
    """Optuna's NSGA-II over the objectives (all minimised), seeded by the spec's first seed."""
    if spec.search != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    sampler = PicklableNSGAIISampler(seed=spec.seeds[0])
    return OptunaSearch(metric=list(objectives), mode=["min"] * len(objectives), sampler=sampler)


def _callbacks(
    spec: SweepSpec, context: SweepContext, settings: TuneSettings, n_trials: int
) -> list[tune.Callback]:
    names: dict[str, str] = {}  # Tune's trial id -> the trial's name (its run directory)

    def name_of(trial: Any) -> str:
        if trial.trial_id not in names:
            names[trial.trial_id] = resolve_trial_config(context, trial.config or {}).name
        return names[trial.trial_id]

    progress = SweepProgress(
        n_trials,
        spec.base.steps,
        name_of,
        finished=settings.finished,
        enabled=settings.progress,
    )
    return [progress, TrialRecorder(SweepDir(Path(context.sweep_dir)).runs, name_of)]


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
            callbacks=_callbacks(spec, context, settings, n_trials),
            verbose=1 if settings.verbose else 0,
        ),
    )


def disconnect() -> None:
    """Leave the Ray cluster (before its head stops, so the head need not wait for us)."""
    import ray

    ray.shutdown()


TUNER_FILE = "tuner.pkl"
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"


def has_saved_state(sweep_dir: Path) -> bool:
    """Whether Tune saved this sweep's experiment state (its files exist; nothing is read)."""
    return (sweep_dir / TUNER_FILE).is_file() and any(sweep_dir.glob(EXPERIMENT_STATE_GLOB))


def unrestorable_reason(sweep_dir: Path) -> str | None:
    """Why Tune could not restore this sweep's saved state (an empty or truncated state file,
    as a full disk leaves it), or None when it looks whole. Parses JSON only, unpickles
    nothing."""
    tuner = sweep_dir / TUNER_FILE
    if not tuner.is_file() or tuner.stat().st_size == 0:
        return f"{tuner} is missing or empty"
    states = sorted(sweep_dir.glob(EXPERIMENT_STATE_GLOB), key=lambda p: p.stat().st_mtime)
    if not states:
        return f"no {EXPERIMENT_STATE_GLOB} in {sweep_dir}"
    try:
        state = json.loads(states[-1].read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return f"{states[-1]} is empty or truncated"
    if not isinstance(state, dict) or "trial_data" not in state:
        return f"{states[-1]} is not Tune's experiment state"
    return None


def set_aside_state(sweep_dir: Path, folder: str) -> Path:
    """Move Tune's saved state out of the way (kept, not deleted) so a new Tuner starts."""
    aside = sweep_dir / folder
    aside.mkdir()
    for path in [sweep_dir / TUNER_FILE, *sweep_dir.glob("*-state-*.json"),
                 *sweep_dir.glob("*.pkl"), *sweep_dir.glob(EXPERIMENT_STATE_GLOB)]:  # fmt: skip
        if path.exists():
            path.rename(aside / path.name)
    return aside


def _tune_state_files(sweep_dir: Path) -> Iterator[Path]:
    """The sweep directory and every file Tune reads back on restore (some unpickled)."""
    yield sweep_dir
    lock = SweepDir(sweep_dir).driver_lock
    for path in sweep_dir.iterdir():
        if path.is_file() and path.suffix in {".pkl", ".json"} and path != lock:
            yield path
        elif path.is_dir() and path.name.startswith("tune_"):
            yield path
            yield from (child for child in path.iterdir() if child.suffix == ".pkl")


def check_tune_state_ownership(sweep_dir: Path) -> None:
    """Before Tune unpickles its state: refuse (one line) a sweep whose Tune files someone else
    could have written — owned by another user, or writable by group or others (as OpenSSH's
    StrictModes treats ``~/.ssh``)."""
    uid = os.getuid()
    for path in _tune_state_files(sweep_dir):
        info = path.lstat()
        if info.st_uid != uid:
            raise UnsafeSweepError(path, f"owned by uid {info.st_uid}, not by you (uid {uid})")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeSweepError(path, f"writable by group or others (mode {info.st_mode:o})")
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeSweepError(path, "a symbolic link")


class UnsafeSweepError(UsageError):
    """Tune's state of a sweep could have been planted by someone else: not restored."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"refusing to restore Tune's state: {path} is {why}; "
            f"fix it (chmod go-w, chown) if you trust its contents"
        )


def fit(
    spec: SweepSpec,
    context: SweepContext,
    settings: TuneSettings,
    n_trials: int,
    restore: Restore | None = None,
) -> None:
    """Run the sweep's trials on Ray Tune until each has finished or errored (Ctrl-C stops it
    resumably); Ray must be initialised (:func:`start`). Outcomes are in each trial's record."""
    trainable = tune.with_resources(
        tune.with_parameters(signlock_trainable, context=context), settings.resources
    )
    ray_log = SweepDir(Path(context.sweep_dir)).ray_log
    quiet = not settings.verbose
    if quiet:
        _send_ray_logs_to(ray_log)
    if restore is None:
        tuner = _new_tuner(trainable, spec, context, settings, n_trials)
    else:
        check_tune_state_ownership(Path(context.sweep_dir))
        tuner = tune.Tuner.restore(
            context.sweep_dir,
            trainable=trainable,
            resume_errored=restore.resume_errored and not restore.restart_errored,
            restart_errored=restore.restart_errored,
        )
        _add_callbacks(tuner, _callbacks(spec, context, settings, n_trials))
    with ray_log.open("a") as log, contextlib.redirect_stdout(log if quiet else sys.stdout):
        tuner.fit()  # Tune prints its experiment box and hints on stdout


def _add_callbacks(tuner: tune.Tuner, callbacks: list[tune.Callback]) -> None:
    """A restored Tuner keeps the callbacks pickled with it (a progress bar counting from the
    first run); give it this run's instead. Not possible through Ray Client (``ray://``)."""
    internal = getattr(tuner, "_local_tuner", None)
    if internal is not None:
        internal.get_run_config().callbacks = callbacks


def start(address: str | None, log_path: Path, *, verbose: bool, connect_timeout: float) -> None:
    """Start or attach to Ray with what its processes print going to ``log_path``."""
    with _stderr_to(log_path, enabled=not verbose):  # Ray's daemons inherit it
        init_ray(address, verbose=verbose, connect_timeout=connect_timeout)


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
