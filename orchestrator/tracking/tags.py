"""The names signlock writes on MLflow runs and experiments, and MLflow's limits on them."""

from __future__ import annotations

TAG_KIND = "signlock.kind"  # "sweep" on parent runs, "trial" on child runs, "probe" on probes
TAG_SWEEP = "signlock.sweep"
TAG_TRIAL = "signlock.trial"  # the trial's stable name: its run directory and its child run
TAG_TRIAL_ID = "signlock.trial_id"  # Ray Tune's id of the latest attempt (restarts get new ids)
TAG_ERROR = "signlock.error"
TAG_RESUMED_FROM = "signlock.resumed_from"  # set when an unreadable newest checkpoint was skipped
TAG_GIT_COMMIT = "signlock.git_commit"
TAG_PARENT = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment by its kind; signlock's are model-training experiments.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
KIND_COLUMN = f"tags.{TAG_KIND}"
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param (or tag) value's length
BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow allows 1000)
PARAM_BATCH_LIMIT = 100  # params, or tags, per log_batch call (MLflow allows 100)
