"""Reading runs back: ``signlock query``'s table of runs, and the report's links to each trial's
run in the MLflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.tracking import MlflowClient

from signlock.orchestrator.tracking.tags import TAG_PARENT, TAG_SWEEP, TAG_TRIAL
from signlock.orchestrator.tracking.uris import open_existing_store
from signlock.trainables.errors import ConfigError

if TYPE_CHECKING:
    from mlflow.entities import Run

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


def _run_row(run: Run) -> dict[str, Any]:
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
