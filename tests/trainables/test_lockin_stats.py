"""Zero-inflated geometric MLE (C.4.2) and tail helpers (Theorem 3.6) against slow references."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from signlock.trainables.lockin_stats import (
    empirical_tail,
    fit_zero_inflated_geometric,
    fit_zig_from_histogram,
    zig_from_moments,
    zig_log_likelihood,
    zig_tail,
)

k_samples = st.lists(st.integers(0, 12), min_size=1, max_size=200)


def reference_fit(ks: list[int]) -> tuple[float, float]:
    """ĥ = P[K>0], ĝ = 1 − 1/E[K | K>0] (ĝ = 0 when that mean is ≤ 1), written out with loops."""
    positive = [k for k in ks if k > 0]
    if not positive:
        return 0.0, 0.0
    h = len(positive) / len(ks)
    mean_positive = sum(positive) / len(positive)
    return h, (1 - 1 / mean_positive) if mean_positive > 1 else 0.0


def reference_log_likelihood(h: float, g: float, ks: list[int]) -> float:
    total = 0.0
    for k in ks:
        p = 1 - h if k == 0 else h * (1 - g) * g ** (k - 1)
        if p <= 0:
            return -math.inf
        total += math.log(p)
    return total


def simulate_zig(h: float, g: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hit = rng.random(n) < h
    return np.where(hit, rng.geometric(1 - g, size=n), 0)


@settings(max_examples=200, deadline=None)
@given(k_samples)
def test_fit_matches_reference(ks):
    assert fit_zero_inflated_geometric(ks) == pytest.approx(reference_fit(ks), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(k_samples)
def test_histogram_fit_equals_sample_fit(ks):
    counts = Counter(ks)
    k, count = zip(*sorted(counts.items()), strict=True)
    assert fit_zig_from_histogram(np.array(k), np.array(count)) == pytest.approx(
        fit_zero_inflated_geometric(ks), abs=1e-12
    )


@settings(max_examples=100, deadline=None)
@given(k_samples, st.floats(0.01, 0.99), st.floats(0.0, 0.95))
def test_fit_maximises_likelihood(ks, h, g):
    h_hat, g_hat = fit_zero_inflated_geometric(ks)
    best = zig_log_likelihood(h_hat, g_hat, ks)
    assert best == pytest.approx(reference_log_likelihood(h_hat, g_hat, ks), abs=1e-9)
    assert best >= reference_log_likelihood(h, g, ks) - 1e-9


@pytest.mark.parametrize(("h", "g"), [(0.3, 0.6), (0.05, 0.1), (0.8, 0.0), (1.0, 0.9)])
def test_fit_recovers_simulated_parameters(h, g):
    ks = simulate_zig(h, g, 200_000, seed=7)
    h_hat, g_hat = fit_zero_inflated_geometric(ks)
    assert h_hat == pytest.approx(h, abs=0.01)
    assert g_hat == pytest.approx(g, abs=0.01)


def test_edge_cases():
    assert fit_zero_inflated_geometric([0, 0, 0]) == (0.0, 0.0)
    assert fit_zero_inflated_geometric([1, 1, 0, 0]) == (0.5, 0.0)  # E[K|K>0] = 1 → ĝ = 0
    assert fit_zero_inflated_geometric([2]) == (1.0, 0.5)
    assert fit_zero_inflated_geometric(torch.tensor([0, 3], dtype=torch.int32)) == pytest.approx(
        (0.5, 2 / 3)
    )
    assert fit_zero_inflated_geometric(np.array([0.0, 2.0])) == (0.5, 0.5)


@pytest.mark.parametrize(
    "bad", [[], [-1, 2], [0.5], [[0, 1]], np.array([True, False]), ["a"]], ids=repr
)
def test_invalid_samples_raise(bad):
    with pytest.raises(ValueError):
        fit_zero_inflated_geometric(bad)


def test_invalid_histograms_raise():
    with pytest.raises(ValueError, match="differ in length"):
        fit_zig_from_histogram([0, 1], [3])
    with pytest.raises(ValueError, match="non-empty"):
        fit_zig_from_histogram([0, 1], [0, 0])
    with pytest.raises(ValueError):
        fit_zig_from_histogram([0, 1], [1, -1])
    with pytest.raises(ValueError, match="non-empty"):
        zig_from_moments(0, 0, 0)
    with pytest.raises(ValueError, match="inconsistent"):
        zig_from_moments(3, 2, 1)


def test_zig_tail_formula():
    k = np.arange(6)
    assert zig_tail(0.4, 0.5, k) == pytest.approx([1.0, 0.4, 0.2, 0.1, 0.05, 0.025])
    assert zig_tail(0.4, 0.0, k) == pytest.approx([1.0, 0.4, 0, 0, 0, 0])
    assert zig_tail(0.4, 0.5, np.array([-2]))[0] == 1.0


def test_zig_tail_matches_simulation():
    h, g = 0.3, 0.5
    ks = simulate_zig(h, g, 400_000, seed=3)
    k, tail = empirical_tail(ks)
    expected = zig_tail(h, g, k)
    assert tail[:6] == pytest.approx(expected[:6], abs=3e-3)


@settings(max_examples=100, deadline=None)
@given(k_samples)
def test_empirical_tail_matches_counting(ks):
    k, tail = empirical_tail(ks)
    assert list(k) == list(range(max(ks) + 1))
    for value, p in zip(k, tail, strict=True):
        assert p == pytest.approx(sum(x >= value for x in ks) / len(ks))
