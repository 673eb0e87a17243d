"""Names of every metric and summary field a trial writes, defined once.

The tracker, the trial loop, the orchestrator (Tune reports, MLflow, ``trials.csv``), ``query``
and ``status`` import these instead of spelling the names themselves, so a field the README
promises cannot silently go missing in one of them.
"""

from __future__ import annotations

from typing import Final

# --- metrics.parquet: one row every ``log_every`` steps ----------------------------------------

VALIDATION_METRICS: Final = ("val_loss", "val_ppl", "val_error")  # NaN on rows without an eval
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

RESULT_METRICS: Final = ("val_ppl", "val_error", "flip_mean", "final_flip_ratio", "h_hat", "g_hat")
FLIP_OBJECTIVE: Final = "flip_mean"


def validation_objective(model_kind: str) -> str:
    """The validation metric a sweep minimises: error for the MNIST MLP (E.2), else PPL (C.4.1)."""
    return "val_error" if model_kind == "mlp" else "val_ppl"
