"""The MLflow adapter: every line of signlock that talks to MLflow, always through an explicit
``MlflowClient`` (no global active run), so trial workers in other processes log concurrently
without sharing state.

Sweeps log one parent run per sweep and one child run per trial; ``analyze``, ``compress``,
``report`` and ``probe`` log their :class:`~signlock.analysis.outputs.Outputs` with
:func:`log_outputs`; ``query`` reads runs back; ``signlock server``/``ui`` run MLflow's own
server (bound to 127.0.0.1 unless told).

* :mod:`.tags` — the tag names signlock writes and MLflow's limits;
* :mod:`.uris` — store URIs, artifact roots, opening a store that must exist;
* :mod:`.params` — params, finite metrics, package versions, the git commit;
* :mod:`.runs` — experiments, the sweep's parent run, :class:`TrialRun`, a probe's run and
  :func:`log_outputs`;
* :mod:`.search` — runs as a table (``signlock query``) and links to trial runs (the report);
* :mod:`.server` — ``mlflow server``/``ui`` as a child process that never outlives signlock.
"""

from mlflow.tracking import MlflowClient

from signlock.orchestrator.tracking.params import (
    PACKAGES,
    finite_metrics,
    flatten_params,
    git_commit,
    package_versions,
)
from signlock.orchestrator.tracking.runs import (
    PROBE_EXPERIMENT,
    TrialRun,
    close_sweep_run,
    create_probe_run,
    create_sweep_run,
    find_trial_run,
    finish_run,
    get_or_create_experiment,
    log_outputs,
    mark_sweep_killed,
    mark_trials_interrupted,
    reopen_sweep_run,
)
from signlock.orchestrator.tracking.search import DEFAULT_UI, search_runs_frame, trial_run_links
from signlock.orchestrator.tracking.server import (
    BACKEND_SCHEMES,
    ORPHAN_STOP_TIMEOUT_S,
    PR_SET_PDEATHSIG,
    SERVER_LOG_NAME,
    SERVER_SLOW_START_S,
    SERVER_STOP_TIMEOUT_S,
    mlflow_server_command,
    run_foreground,
    server_environment,
    server_log_path,
    server_url,
)
from signlock.orchestrator.tracking.tags import (
    BATCH_LIMIT,
    EXPERIMENT_KIND,
    KIND_COLUMN,
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
from signlock.orchestrator.tracking.uris import (
    absolute_tracking_uri,
    default_artifact_root,
    default_tracking_uri,
    local_store_path,
    open_existing_store,
)

__all__ = [
    "BACKEND_SCHEMES",
    "BATCH_LIMIT",
    "DEFAULT_UI",
    "EXPERIMENT_KIND",
    "KIND_COLUMN",
    "ORPHAN_STOP_TIMEOUT_S",
    "PACKAGES",
    "PARAM_BATCH_LIMIT",
    "PARAM_VALUE_LIMIT",
    "PROBE_EXPERIMENT",
    "PR_SET_PDEATHSIG",
    "SERVER_LOG_NAME",
    "SERVER_SLOW_START_S",
    "SERVER_STOP_TIMEOUT_S",
    "TAG_ERROR",
    "TAG_EXPERIMENT_KIND",
    "TAG_GIT_COMMIT",
    "TAG_KIND",
    "TAG_PARENT",
    "TAG_RESUMED_FROM",
    "TAG_SWEEP",
    "TAG_TRIAL",
    "TAG_TRIAL_ID",
    "MlflowClient",
    "TrialRun",
    "absolute_tracking_uri",
    "close_sweep_run",
    "create_probe_run",
    "create_sweep_run",
    "default_artifact_root",
    "default_tracking_uri",
    "find_trial_run",
    "finish_run",
    "finite_metrics",
    "flatten_params",
    "get_or_create_experiment",
    "git_commit",
    "local_store_path",
    "log_outputs",
    "mark_sweep_killed",
    "mark_trials_interrupted",
    "mlflow_server_command",
    "open_existing_store",
    "package_versions",
    "reopen_sweep_run",
    "run_foreground",
    "search_runs_frame",
    "server_environment",
    "server_log_path",
    "server_url",
    "trial_run_links",
]
