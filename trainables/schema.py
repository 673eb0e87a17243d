"""Names of every metric and summary field a trial writes, defined once.

The tracker, the trial loop, the orchestrator (Tune reports, MLflow, ``trials.csv``), ``query``
and ``status`` import these instead of spelling the names themselves, so a field the README
promises cannot silently go missing in one of them.
"""

from __future__ import annotations

from typing import Any, Final

# --- metrics.parquet: one row every ``log_every`` steps ----------------------------------------

VAL_LOSS: Final = "val_loss"
VAL_PPL: Final = "val_ppl"  # language models: exp(loss in nats) (C.4.1)
VAL_ERROR: Final = "val_error"  # classifiers: 1 - accuracy (E.2.1)
VALIDATION_METRICS: Final = (VAL_LOSS, VAL_PPL, VAL_ERROR)  # NaN on rows without an eval
TRACKER_WINDOW_METRICS: Final = (
    "flip_vs_init",  # Section 2.1: fraction with sign(w_t) != sign(w_0)
    "flip_mean",  # C.4.2: zero crossings / (N·t) so far, cumulative
    "step_flip_rate",  # zero crossings per scalar and step since the previous row
    "boundary_hit_fraction",  # fraction with τ1 <= t (Definition 3.2)
)
METRIC_COLUMNS: Final = (
    "step",
    "train_loss",
    *VALIDATION_METRICS,
    "lr",
    "lam",
    "penalty",
    *TRACKER_WINDOW_METRICS,
    "projection_changes",
    "elapsed_s",
)

# --- tensor_metrics.parquet: per tracked tensor, one row every ``log_every`` steps (long) ------

TENSOR_METRIC_COLUMNS: Final = (
    "step",
    "tensor",
    "n_tracked",
    "flip_vs_init",  # fraction of the tensor's tracked scalars with sign(w_t) != sign(w_0)
    "step_flip_rate",  # zero crossings per scalar and step since the previous row
    "boundary_hit_fraction",  # fraction with τ1 <= t (Definition 3.2)
    "k_mean",  # cumulative mean of K (effective flips so far, Definition 3.2)
)

# --- summary.json ------------------------------------------------------------------------------

TRACKER_SUMMARY_FIELDS: Final = (
    "final_flip_ratio",  # flip_vs_init at the last step
    "flip_mean",
    "h_hat",  # zero-inflated geometric MLE of K (C.4.2)
    "g_hat",
    "h_direct",
    "k_mean",
    "zero_crossings",
    "band_skipping_fraction",
    "n_tracked",
)
SUMMARY_INT_FIELDS: Final = ("steps", "projection_changes_total", "zero_crossings", "n_tracked")
SUMMARY_FIELDS: Final = (
    "name",
    "steps",
    "optimizer",
    "device",
    "wall_time_s",
    "steps_per_s",
    "projection_changes_total",
    "final_train_loss",
    *VALIDATION_METRICS,
    *TRACKER_SUMMARY_FIELDS,
)

# --- what a sweep shows per trial (trials.csv, status, query's default columns) ----------------

OBJECTIVE_METRICS: Final = (VAL_PPL, VAL_ERROR)  # a family's validation objective is one of these
FLIP_OBJECTIVE: Final = "flip_mean"
RESULT_METRICS: Final = (
    *OBJECTIVE_METRICS,
    FLIP_OBJECTIVE,
    "final_flip_ratio",
    "h_hat",
    "g_hat",
)
STATUS_METRICS: Final = (*OBJECTIVE_METRICS, FLIP_OBJECTIVE, "h_hat", "g_hat")
VAL_ACCURACY: Final = "val_accuracy"  # 1 - val_error: Fig. 20's performance axis for classifiers

# --- a sweep's parent run: counts (MLflow keeps doubles; query shows them as integers) ---------

SWEEP_COUNT_METRICS: Final = ("trials_total", "trials_errored", "trials_unfinished")
ANALYSIS_COUNT_METRICS: Final = (
    "analysis.trials",
    "analysis.trials_missing",
    "analysis.pareto_size",
    "analysis.floating_trials",
)


def validation_objective(config: Any) -> str:
    """The validation metric a sweep of ``config`` (a TrialConfig or its model config)
    minimises: its family's (PPL for language models, C.4.1; error for classifiers, E.2)."""
    from signlock.trainables.families import family_of  # the families import this module

    return family_of(config).validation_metric


def compression_metric(validation_metric: str) -> str:
    """What ``signlock compress`` reports for a family's validation metric: PPL as it is,
    accuracy instead of error (E.3.5, Fig. 20)."""
    return VAL_ACCURACY if validation_metric == VAL_ERROR else validation_metric
