"""The MLflow adapter: every line of signlock that talks to MLflow.

Sweeps log one parent run per sweep and one child run per trial; ``query`` reads runs back;
``signlock server``/``ui`` run MLflow's own server (bound to 127.0.0.1 unless told).

Everything goes through an explicit ``MlflowClient`` (no global active run), so trial workers in
other processes log concurrently without sharing state. A trial's child run is found again by
its tags (sweep parent run id + Tune trial id), so a resumed or retried trial continues its own
run instead of opening a duplicate — by the trial's name, which survives even
``restart_errored`` (Tune gives the restarted trial a new id); step metrics already in the run
are not logged twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from signlock.trainables.errors import ConfigError, InputNotFoundError

TAG_KIND = "signlock.kind"  # "sweep" on parent runs, "trial" on child runs
TAG_SWEEP = "signlock.sweep"
TAG_TRIAL = "signlock.trial"  # the trial's stable name: its run directory and its child run
TAG_TRIAL_ID = "signlock.trial_id"  # Ray Tune's id of the latest attempt (restarts get new ids)
TAG_ERROR = "signlock.error"
TAG_RESUMED_FROM = "signlock.resumed_from"  # set when an unreadable newest checkpoint was skipped
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
# MLflow 3's UI opens an experiment by its kind; signlock's are model-training experiments.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
KIND_COLUMN = f"tags.{TAG_KIND}"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length
BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow allows 1000)
PACKAGES = ("signlock", "torch", "ray", "mlflow", "optuna", "pandas", "pyarrow", "submitit")
# MLflow announces creating or upgrading a sqlite store's tables at INFO level on the terminal.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

TRIAL_ARTIFACTS = (
    "config.json",
    "summary.json",
    "metrics.parquet",
    "flips.parquet",
    "tensor_stats.parquet",
    "tensor_metrics.parquet",
)


def default_tracking_uri(root: Path) -> str:
    """The embedded default: a sqlite store beside the sweeps (MLflow 3's own default backend)."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def absolute_tracking_uri(uri: str) -> str:
    """Local stores with absolute paths: trial workers run in other working directories."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:")).resolve().as_uri()
    if "://" not in uri:  # a bare path is MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def default_artifact_root(tracking_uri: str, root: Path) -> str | None:
    """Artifact location for new experiments in a local store: ``mlartifacts`` beside a sqlite
    file, else under ``root``. Tracking servers choose their own (None)."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return (root / "mlartifacts").resolve().as_uri()


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"init.a_init": "0.02", …}`` (lists as JSON), clipped to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            flat[name] = text[:PARAM_VALUE_LIMIT]
    return flat


def finite_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a row or summary (NaN marks 'not measured this row')."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(source: Path | None = None) -> str | None:
    """The commit of the signlock checkout, when it is one (editable installs)."""
    here = source or Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if TAG_EXPERIMENT_KIND not in experiment.tags:
            experiment_id = experiment.experiment_id
            client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return experiment.experiment_id
    location = f"{artifact_root}/{name}" if artifact_root else None
    tags = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
    return client.create_experiment(name, artifact_location=location, tags=tags)


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), 100):  # MLflow allows 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


def create_sweep_run(
    client: MlflowClient,
    experiment_id: str,
    sweep_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
) -> str:
    """The sweep's parent run (left RUNNING until the sweep finishes)."""
    all_tags = {TAG_KIND: "sweep", TAG_SWEEP: sweep_name, **package_versions(), **tags}
    commit = git_commit()
    if commit:
        all_tags["signlock.git_commit"] = commit
    run = client.create_run(experiment_id, run_name=sweep_name, tags=all_tags)
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def find_trial_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, trial: str
) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial}'",
        max_results=2,
    )
    return runs[0].info.run_id if runs else None


class TrialRun:
    """A trial's child run: opened (or re-opened) once per attempt, then fed rows and a summary."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        sweep_name: str,
        trial: str,
        trial_id: str,
    ) -> None:
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep_name = sweep_name
        self.trial = trial
        self.trial_id = trial_id
        self.run_id = ""
        self.last_logged_step = -1

    def open(self, params: Mapping[str, str]) -> str:
        existing = find_trial_run(self.client, self.experiment_id, self.parent_run_id, self.trial)
        if existing is None:
            tags = {
                TAG_PARENT: self.parent_run_id,
                TAG_KIND: "trial",
                TAG_SWEEP: self.sweep_name,
                TAG_TRIAL: self.trial,
                TAG_TRIAL_ID: self.trial_id,
            }
            run = self.client.create_run(self.experiment_id, run_name=self.trial, tags=tags)
            self.run_id = run.info.run_id
            _log_params(self.client, self.run_id, params)
        else:
            self.run_id = existing
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, TAG_TRIAL_ID, self.trial_id)
            if TAG_ERROR in self.client.get_run(self.run_id).data.tags:
                self.client.delete_tag(self.run_id, TAG_ERROR)
            history = self.client.get_metric_history(self.run_id, "train_loss")
            self.last_logged_step = max((m.step for m in history), default=-1)
        return self.run_id

    def log_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Step metrics of rows not yet in the run (a resumed attempt recomputes some rows)."""
        now = int(time.time() * 1000)
        metrics: list[Metric] = []
        for row in rows:
            step = int(row["step"])
            if step <= self.last_logged_step:
                continue
            values = finite_metrics({k: v for k, v in row.items() if k != "step"})
            metrics.extend(Metric(key, value, now, step) for key, value in values.items())
            self.last_logged_step = step
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH_LIMIT])

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        """Summary metrics at the final step, the run directory's files as artifacts, FINISHED."""
        step = int(summary.get("steps", 0))
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in finite_metrics(summary).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        for name in TRIAL_ARTIFACTS:
            path = run_dir / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, reason: str, run_dir: Path | None = None) -> None:
        """Record why the attempt ended; a retry re-opens the run and clears the tag."""
        self.client.log_batch(self.run_id, tags=[RunTag(TAG_ERROR, reason[:PARAM_VALUE_LIMIT])])
        if run_dir is not None:
            for name in ("config.json", "metrics.parquet", "flips.parquet"):
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.set_terminated(self.run_id, status="FAILED")

    def interrupted(self) -> None:
        """The sweep was stopped (Ctrl-C, a cancelled job): KILLED until it is resumed."""
        self.client.set_terminated(self.run_id, status="KILLED")

    def resumed_from(self, checkpoint: str, skipped: Iterable[str]) -> None:
        """Say that this attempt resumed from an older checkpoint, and why."""
        reason = f"{checkpoint} ({'; '.join(skipped)})"[:PARAM_VALUE_LIMIT]
        self.client.set_tag(self.run_id, TAG_RESUMED_FROM, reason)


def mark_trials_interrupted(
    client: MlflowClient, experiment_id: str, parent_run_id: str, trials: Iterable[str]
) -> None:
    """Child runs of trials that stopped with the sweep (their worker killed before it could say
    so) are KILLED, not left RUNNING."""
    for trial in trials:
        run_id = find_trial_run(client, experiment_id, parent_run_id, trial)
        if run_id is not None and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")


def reopen_sweep_run(client: MlflowClient, run_id: str) -> None:
    client.update_run(run_id, status="RUNNING")


def mark_sweep_killed(client: MlflowClient, run_id: str) -> None:
    """A cancelled sweep: KILLED until ``signlock resume`` reopens it."""
    client.set_terminated(run_id, status="KILLED")


def close_sweep_run(
    client: MlflowClient, run_id: str, n_trials: int, n_errors: int, n_unfinished: int = 0
) -> None:
    """FINISHED when every trial finished, KILLED when some were interrupted (Ctrl-C), FAILED
    when some errored; ``signlock resume`` reopens it."""
    now = int(time.time() * 1000)
    counts = {
        "trials_total": n_trials,
        "trials_errored": n_errors,
        "trials_unfinished": n_unfinished,
    }
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in counts.items()])
    status = "KILLED" if n_unfinished else "FAILED" if n_errors else "FINISHED"
    client.set_terminated(run_id, status=status)


DEFAULT_UI = "http://127.0.0.1:5000"  # `signlock ui`


def trial_run_links(
    client: MlflowClient, tracking_uri: str, experiment_id: str, parent_run_id: str
) -> dict[str, str]:
    """Trial name → the URL of its child run in the MLflow UI (the tracking server's own, or
    `signlock ui` on 127.0.0.1:5000 for a local store)."""
    ui = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else DEFAULT_UI
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'", max_results=50000
    )
    return {
        r.data.tags[TAG_TRIAL]: f"{ui}/#/experiments/{experiment_id}/runs/{r.info.run_id}"
        for r in runs
        if TAG_TRIAL in r.data.tags
    }


def log_analysis(
    client: MlflowClient, run_id: str, directory: Path, metrics: Mapping[str, float]
) -> None:
    """A sweep's analysis on its parent run: the files under ``analysis/`` (same names replace
    the previous analysis's) and the headline numbers as metrics (unchanged values are not
    logged again)."""
    client.log_artifacts(run_id, str(directory), "analysis")
    current = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    changed = [
        Metric(key, float(value), now, 0)
        for key, value in finite_metrics(metrics).items()
        if current.get(key) != value
    ]
    if changed:
        client.log_batch(run_id, metrics=changed)


def local_store_path(tracking_uri: str) -> Path | None:
    """The file or directory of a local store (sqlite, file store); None for servers."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///"))
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
    return None


def open_existing_store(tracking_uri: str) -> MlflowClient:
    """A client of a store that must already exist: read-only commands never create one. A
    local sqlite file that is empty, truncated or garbled is one line naming it."""
    import sqlite3

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from signlock.trainables.files import UnreadableFileError

    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise InputNotFoundError(f"no MLflow store at {path}")
    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri)
    if path.is_file() and path.stat().st_size == 0:  # sqlite would make it a new store
        raise UnreadableFileError(path, "empty, not an MLflow sqlite store")
    try:
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    except (SQLAlchemyError, sqlite3.Error, MlflowException) as error:
        cause = str(getattr(error, "orig", None) or error).strip().splitlines() or ["unknown"]
        reason = f"not a readable MLflow sqlite store ({cause[0][:200]})"
        raise UnreadableFileError(path, reason) from None
    return client


def search_runs_frame(
    tracking_uri: str, experiment: str, mlflow_filter: str, *, sweep: str | None = None
) -> pd.DataFrame:
    """Every run of ``experiment`` matching ``mlflow_filter`` (and tagged with ``sweep``, which
    some run must be) as one row: ``run_id``, ``status``, ``start_time``, ``end_time``, then
    ``params.*``, ``metrics.*`` (latest values) and ``tags.*`` columns, like
    ``mlflow.search_runs`` but through an explicit client."""
    from mlflow.exceptions import MlflowException

    from signlock.trainables.errors import SweepNotFoundError

    client = open_existing_store(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError("--experiment", experiment, f"an experiment in {tracking_uri}")
    by_sweep = f"tags.`{TAG_SWEEP}` = '{sweep}'" if sweep else ""
    combined = " and ".join(part for part in (mlflow_filter, by_sweep) if part)
    rows: list[dict[str, Any]] = []
    token = None
    try:
        while True:
            page = client.search_runs(
                [found.experiment_id], combined, max_results=1000, page_token=token
            )
            rows.extend(_run_row(run) for run in page)
            token = page.token
            if not token:
                break
    except MlflowException as error:
        if error.error_code != "INVALID_PARAMETER_VALUE":
            raise
        first = str(error.message).splitlines()[0]
        raise ConfigError("--mlflow-filter", mlflow_filter, f"an MLflow filter ({first})") from None
    runs_of_sweep = (
        rows or not by_sweep or client.search_runs([found.experiment_id], by_sweep, max_results=1)
    )
    if not runs_of_sweep:  # no run of the experiment has that sweep's tag
        raise SweepNotFoundError(sweep, tracking_uri)
    return pd.DataFrame(rows)


def _run_row(run: Any) -> dict[str, Any]:
    info = run.info
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else None,
    }
    row.update({f"params.{k}": v for k, v in run.data.params.items()})
    row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
    row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
    return row


# ---- `signlock server` / `signlock ui`: MLflow's own server, on 127.0.0.1 unless told --------

BACKEND_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://")


def mlflow_server_command(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    ui_only: bool = False,
    workers: int | None = None,
) -> list[str]:
    """The ``mlflow server`` (or ``mlflow ui``) command line for these stores. A UI for one
    person runs one uvicorn worker unless told (MLflow's default of 4 kept it from answering for
    tens of seconds); a tracking server keeps MLflow's default for concurrent trials."""
    if not backend_store_uri.startswith(BACKEND_SCHEMES):
        raise ConfigError(
            "--backend-store-uri", backend_store_uri, "one of " + ", ".join(BACKEND_SCHEMES)
        )
    if not 0 < port < 65536:
        raise ConfigError("--port", port, "1..65535")
    workers = 1 if workers is None and ui_only else workers
    if workers is not None and workers < 1:
        raise ConfigError("--workers", workers, "at least 1")
    if backend_store_uri.startswith("postgresql://"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; signlock[postgres] is psycopg2.
        backend_store_uri = "postgresql+psycopg2://" + backend_store_uri.removeprefix(
            "postgresql://"
        )
    if backend_store_uri.startswith("sqlite:///"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui" if ui_only else "server"]
    command += ["--backend-store-uri", backend_store_uri, "--host", host, "--port", str(port)]
    command += ["--workers", str(workers)] if workers else []
    if ui_only:
        return [*command, "--default-artifact-root", _as_uri(artifacts_destination)]
    return [*command, "--artifacts-destination", _as_uri(artifacts_destination)]


def _as_uri(location: str) -> str:
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


SERVER_STOP_TIMEOUT_S = 30.0
ORPHAN_STOP_TIMEOUT_S = 10  # MLflow's job consumers can take a minute to heed SIGTERM
SERVER_SLOW_START_S = 60.0  # say where to look when MLflow has not answered by then
SERVER_LOG_NAME = "mlflow-server.log"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Run in a session of its own beside MLflow's, this stops MLflow's whole process group once
# signlock's process has ended however it ended (SIGKILL included, which no handler sees):
# `read` returns at end of file, when signlock, the only writer of its stdin, is gone.
# $0 is the group, $1 the seconds between SIGTERM and SIGKILL.
_GROUP_GUARD = """read -r _
kill -s TERM -- "-$0" 2>/dev/null || exit 0
i=0
while [ "$i" -lt "$1" ] && kill -s 0 -- "-$0" 2>/dev/null; do sleep 1; i=$((i + 1)); done
kill -s KILL -- "-$0" 2>/dev/null
"""


def server_environment(*, ui_only: bool) -> dict[str, str]:
    """The environment MLflow's server runs in: unbuffered output (its log is a file), and for a
    UI no job consumers (7 Huey processes for GenAI evaluation jobs) unless asked for."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ui_only:
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def server_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to ``host`` (any address: loopback)."""
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server_log_path(backend_store_uri: str, default_dir: Path) -> Path:
    """MLflow's own output goes beside a sqlite store, else into ``default_dir``."""
    store = local_store_path(backend_store_uri)
    folder = store.parent if store is not None else default_dir
    return (folder / SERVER_LOG_NAME).resolve()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_foreground(
    command: list[str], *, url: str, log_path: Path, env: Mapping[str, str] | None = None
) -> int:
    """Run the server until Ctrl-C or SIGTERM, then stop it with everything it started (MLflow's
    server runs uvicorn workers and job consumers in processes of its own: they all live in the
    server's process group, which is stopped as a whole — also when signlock is killed outright:
    a guard process does it then, and on Linux the server gets SIGTERM when signlock ends).
    MLflow's output goes to ``log_path``; the URL is printed once the server answers there."""
    print(f"signlock: MLflow's output goes to {log_path}", file=sys.stderr, flush=True)
    process = _start_logged(command, log_path, env)
    guard = _guard_group(process.pid)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _announce_when_answering(process, url, log_path)
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    code = _stop_group(process)  # also the workers that outlive a server that ended by itself
    _end_guard(guard)
    return code


def _start_logged(
    command: list[str], log_path: Path, env: Mapping[str, str] | None
) -> subprocess.Popen:
    import shlex

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"\n{time.strftime('%Y-%m-%d %H:%M:%S')} signlock: {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            command,
            env=dict(env if env is not None else os.environ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches signlock only, which stops the group
            preexec_fn=_parent_death_signal(),
        )


def _parent_death_signal() -> Any:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when signlock's process ends
    (``PR_SET_PDEATHSIG``; MLflow's server forwards it to its uvicorn); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import functools

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, not in the forked child
    return functools.partial(_arm_parent_death_signal, prctl, os.getpid())


def _arm_parent_death_signal(prctl: Any, parent: int) -> None:
    prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:  # signlock ended before the signal was armed
        os._exit(1)


def _guard_group(pgid: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["/bin/sh", "-c", _GROUP_GUARD, str(pgid), str(ORPHAN_STOP_TIMEOUT_S)],
        stdin=subprocess.PIPE,  # signlock holds the only write end: it closes when signlock ends
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of reach of a signal to signlock's group
    )


def _end_guard(guard: subprocess.Popen) -> None:
    guard.kill()  # signlock stopped the group itself
    guard.wait()
    if guard.stdin is not None:
        guard.stdin.close()


def _announce_when_answering(process: subprocess.Popen, url: str, log_path: Path) -> None:
    """Print the URL once the server answers HTTP there; if it ends first, the end of its log."""
    started = time.monotonic()
    hinted = False
    while process.poll() is None:
        if _answers(url):
            print(f"signlock: MLflow {_server_kind(process)} at {url}", flush=True)
            return
        if not hinted and time.monotonic() - started > SERVER_SLOW_START_S:
            print(f"signlock: {url} does not answer yet; see {log_path}", file=sys.stderr)
            hinted = True
        time.sleep(0.25)
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    print(f"signlock: MLflow ended with status {process.returncode} before answering; "
          f"the end of {log_path}:", *tail, sep="\n", file=sys.stderr)  # fmt: skip


def _server_kind(process: subprocess.Popen) -> str:
    return "UI" if process.args[1] == "ui" else "tracking server"


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: a refusal by MLflow's host check
    is an answer), asked directly, never through a proxy from the environment."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _stop_group(process: subprocess.Popen) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their server
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


PROBE_EXPERIMENT = "signlock-probes"


def log_probe(
    tracking_uri: str,
    run_name: str,
    directory: Path,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    *,
    experiment: str = PROBE_EXPERIMENT,
    parent: tuple[str, str] | None = None,
    storage: Path = Path("signlock-runs") / "sweeps",
) -> str:
    """One finished MLflow run holding a probe's outputs (artifacts under ``probe/``): in
    ``experiment`` (created with the sweeps' artifact root, :func:`default_artifact_root` of
    ``storage``), or nested under ``parent`` = (experiment id, parent run id) of a sweep."""
    client = MlflowClient(tracking_uri)
    tags = {TAG_KIND: "probe", **package_versions()}
    if parent is None:
        artifact_root = default_artifact_root(tracking_uri, storage)
        experiment_id = get_or_create_experiment(client, experiment, artifact_root)
    else:
        experiment_id, parent_run_id = parent
        tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    _log_params(client, run_id, params)
    now = int(time.time() * 1000)
    values = [Metric(key, float(v), now, 0) for key, v in finite_metrics(metrics).items()]
    for start in range(0, len(values), 1000):
        client.log_batch(run_id, metrics=values[start : start + 1000])
    client.log_artifacts(run_id, str(directory), "probe")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_artifacts_on_run(
    client: MlflowClient, run_id: str, files: Iterable[Path], artifact_path: str
) -> None:
    """Files on an existing run under ``artifact_path`` (same names replace earlier ones)."""
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)
