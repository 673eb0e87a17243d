"""Pareto fronts of sweep results, e.g. flip rate vs perplexity (Section 4, Fig. 5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MODES = ("min", "max")


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n × m), every objective minimised.

    Row i is dominated when some row j is ≤ in every objective and < in at least one. Rows with
    a NaN objective are never on the front. O(n²·m), fine for sweeps of thousands of trials.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (trials × objectives), got shape {values.shape}")
    valid = ~np.isnan(values).any(axis=1)
    mask = valid.copy()
    for i in np.flatnonzero(valid):
        others = values[valid]
        no_worse = (others <= values[i]).all(axis=1)
        better = (others < values[i]).any(axis=1)
        mask[i] = not (no_worse & better).any()
    return mask


def pareto_front(
    table: pd.DataFrame, objectives: Sequence[str], modes: Sequence[str] | None = None
) -> pd.DataFrame:
    """The rows of ``table`` on the Pareto front of ``objectives`` (``modes``: min/max each,
    default all min), sorted by the first objective."""
    modes = list(modes) if modes is not None else ["min"] * len(objectives)
    if len(modes) != len(objectives) or any(mode not in MODES for mode in modes):
        raise ValueError(f"modes must be one of {MODES} per objective, got {modes}")
    missing = [name for name in objectives if name not in table.columns]
    if missing:
        raise KeyError(f"objectives not in the table: {missing}")
    signs = np.array([1.0 if mode == "min" else -1.0 for mode in modes])
    values = table[list(objectives)].to_numpy(dtype=np.float64) * signs
    front = table[pareto_mask(values)]
    return front.sort_values(objectives[0]).reset_index(drop=True)
