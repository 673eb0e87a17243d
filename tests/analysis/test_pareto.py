"""Pareto front against a brute-force reference written from the definition of dominance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signlock.analysis.pareto import pareto_front, pareto_mask

point = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 6))


def reference_front(points: list[tuple[float, ...]]) -> list[bool]:
    front = []
    for i, p in enumerate(points):
        if any(math.isnan(x) for x in p):
            front.append(False)
            continue
        dominated = False
        for j, q in enumerate(points):
            if j == i or any(math.isnan(x) for x in q):
                continue
            if all(a <= b for a, b in zip(q, p, strict=True)) and any(
                a < b for a, b in zip(q, p, strict=True)
            ):
                dominated = True
        front.append(not dominated)
    return front


@settings(max_examples=200, deadline=None)
@given(st.lists(point, min_size=1, max_size=40))
def test_mask_matches_reference(points):
    assert list(pareto_mask(np.array(points, dtype=float))) == reference_front(points)


def test_nan_rows_are_never_on_the_front_and_duplicates_both_stay():
    values = np.array([[1.0, 2.0], [np.nan, 0.0], [1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    assert list(pareto_mask(values)) == [True, False, True, True, False]


def test_front_of_a_table_with_modes():
    table = pd.DataFrame(
        {"val_ppl": [5.0, 4.0, 6.0, 4.5], "flip_mean": [0.1, 0.3, 0.05, 0.4], "acc": [1, 2, 3, 4]}
    )
    front = pareto_front(table, ["val_ppl", "flip_mean"])
    assert front["val_ppl"].tolist() == [4.0, 5.0, 6.0]
    assert pareto_front(table, ["acc"], ["max"])["acc"].tolist() == [4]
    with pytest.raises(ValueError, match="modes"):
        pareto_front(table, ["val_ppl"], ["down"])
    with pytest.raises(KeyError, match="nope"):
        pareto_front(table, ["nope"])
