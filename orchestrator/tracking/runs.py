"""Runs: a sweep's parent run, each trial's child run (:class:`TrialRun`), a probe's run, and any
command's :class:`~signlock.analysis.outputs.Outputs` logged on a run (:func:`log_outputs`).

Every run is created by one path (:func:`_create_run`: tags, then params) and every batch goes
through one helper (:func:`_log_batch`, within MLflow's limits). A trial's child run is found
again by its tags (sweep parent run id + the trial's name), so a resumed or retried trial
continues its own run instead of opening a duplicate — by the trial's name, which survives even
``restart_errored`` (Tune gives the restarted trial a new id); step metrics already in the run
are not logged twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from signlock.orchestrator.tracking.params import finite_metrics, git_commit, package_versions
from signlock.orchestrator.tracking.tags import (
    BATCH_LIMIT,
    EXPERIMENT_KIND,
    PARAM_BATCH_LIMIT,
    PARAM_VALUE_LIMIT,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_PARENT,
    TAG_RESUMED_FROM,
    TAG_SWEEP,
    TAG_TRIAL,
    TAG_TRIAL_ID,
)
from signlock.orchestrator.tracking.uris import default_artifact_root
from signlock.trainables.layout import RunDir
from signlock.trainables.schema import SWEEP_COUNT_METRICS

if TYPE_CHECKING:
    from signlock.analysis.outputs import Outputs

PROBE_EXPERIMENT = "signlock-probes"


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


# ---- the one batching helper and the one run-creation path ------------------------------------


def _metrics(values: Mapping[str, float], step: int = 0) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()]


def _log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    metrics: Sequence[Metric] = (),
) -> None:
    """Params, tags and metrics in ``log_batch`` calls within MLflow's limits (at most
    ``PARAM_BATCH_LIMIT`` params or tags, ``BATCH_LIMIT`` metrics per call)."""
    batches: list[tuple[str, list[Any], int]] = [
        ("params", [Param(k, v) for k, v in (params or {}).items()], PARAM_BATCH_LIMIT),
        ("tags", [RunTag(k, v) for k, v in (tags or {}).items()], PARAM_BATCH_LIMIT),
        ("metrics", list(metrics), BATCH_LIMIT),
    ]
    for kind, entities, limit in batches:
        for start in range(0, len(entities), limit):
            client.log_batch(run_id, **{kind: entities[start : start + limit]})


def _create_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
) -> str:
    """A new run (RUNNING) with its tags and params; its id."""
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    _log_batch(client, run.info.run_id, params=params)
    return run.info.run_id


def finish_run(client: MlflowClient, run_id: str) -> None:
    client.set_terminated(run_id, status="FINISHED")


# ---- a sweep's parent run ---------------------------------------------------------------------


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
        all_tags[TAG_GIT_COMMIT] = commit
    return _create_run(client, experiment_id, sweep_name, all_tags, params)


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
    counts = dict(zip(SWEEP_COUNT_METRICS, (n_trials, n_errors, n_unfinished), strict=True))
    _log_batch(client, run_id, metrics=_metrics(counts))
    status = "KILLED" if n_unfinished else "FAILED" if n_errors else "FINISHED"
    client.set_terminated(run_id, status=status)


# ---- a trial's child run ----------------------------------------------------------------------


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
            self.run_id = _create_run(self.client, self.experiment_id, self.trial, tags, params)
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
        metrics: list[Metric] = []
        for row in rows:
            step = int(row["step"])
            if step <= self.last_logged_step:
                continue
            metrics += _metrics(finite_metrics({k: v for k, v in row.items() if k != "step"}), step)
            self.last_logged_step = step
        _log_batch(self.client, self.run_id, metrics=metrics)

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        """Summary metrics at the final step, the run directory's files as artifacts, FINISHED."""
        step = int(summary.get("steps", 0))
        _log_batch(self.client, self.run_id, metrics=_metrics(finite_metrics(summary), step))
        for path in RunDir(run_dir).logged_files():
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        finish_run(self.client, self.run_id)

    def fail(self, reason: str, run_dir: Path | None = None) -> None:
        """Record why the attempt ended; a retry re-opens the run and clears the tag."""
        _log_batch(self.client, self.run_id, tags={TAG_ERROR: reason[:PARAM_VALUE_LIMIT]})
        if run_dir is not None:
            files = RunDir(run_dir)
            for path in (files.config, files.metrics, files.flips):
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
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


# ---- a probe's run and any command's outputs --------------------------------------------------


def create_probe_run(
    client: MlflowClient,
    tracking_uri: str,
    run_name: str,
    params: Mapping[str, str],
    *,
    experiment: str = PROBE_EXPERIMENT,
    parent: tuple[str, str] | None = None,
    storage: Path,
) -> str:
    """A probe's run (RUNNING until :func:`finish_run`) in ``experiment`` of ``tracking_uri``
    (created with the sweeps' artifact root, :func:`default_artifact_root` of ``storage``), or
    nested under ``parent`` = (experiment id, parent run id) of a sweep."""
    tags = {TAG_KIND: "probe", **package_versions()}
    if parent is None:
        artifact_root = default_artifact_root(tracking_uri, storage)
        experiment_id = get_or_create_experiment(client, experiment, artifact_root)
    else:
        experiment_id, parent_run_id = parent
        tags[TAG_PARENT] = parent_run_id
    return _create_run(client, experiment_id, run_name, tags, params)


def log_outputs(client: MlflowClient, run_id: str, outputs: Outputs, artifact_path: str) -> None:
    """A command's outputs on a run: its files as artifacts under ``artifact_path`` (same names
    replace earlier ones, other files stay), then its finite metrics at step 0 (values the run
    already holds are not logged again)."""
    for path in outputs.files:
        client.log_artifact(run_id, str(path), artifact_path)
    values = finite_metrics(outputs.metrics)
    if not values:
        return
    current = client.get_run(run_id).data.metrics
    changed = {key: value for key, value in values.items() if current.get(key) != value}
    _log_batch(client, run_id, metrics=_metrics(changed))
