"""Lock-in statistics against simulations with known truth (the slow reference is sampling)."""

from __future__ import annotations

import numpy as np
import pytest

from signlock.analysis.lockin import bootstrap, fit, floating_test, goodness_of_fit


def simulate_zig(h: float, g: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """K per scalar by the definition (C.4.2): 0 w.p. 1−h, else 1 + Geometric(g) failures."""
    positive = rng.random(n) < h
    # numpy's geometric counts trials to the first success with success prob. 1−g: values ≥ 1
    return np.where(positive, rng.geometric(1 - g, size=n), 0)


def histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ks, counts = np.unique(values, return_counts=True)
    return ks, counts


def test_the_mle_recovers_known_h_and_g():
    rng = np.random.default_rng(1)
    ks, counts = histogram(simulate_zig(0.3, 0.6, 200_000, rng))
    fitted = fit(ks, counts)
    assert fitted.h == pytest.approx(0.3, abs=0.005) and fitted.g == pytest.approx(0.6, abs=0.005)
    assert fitted.n == 200_000


def test_the_bootstrap_interval_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    h, g, repeats = 0.2, 0.5, 200
    covered_h = covered_g = 0
    for repeat in range(repeats):
        ks, counts = histogram(simulate_zig(h, g, 2000, rng))
        interval = bootstrap(ks, counts, resamples=400, level=0.9, seed=repeat)
        covered_h += interval.h_low <= h <= interval.h_high
        covered_g += interval.g_low <= g <= interval.g_high
    # 90 % nominal; with 200 repeats the binomial standard error is about 2 %.
    assert 0.84 <= covered_h / repeats <= 0.96
    assert 0.84 <= covered_g / repeats <= 0.96


def test_the_bootstrap_cost_depends_on_distinct_k_not_on_scalars():
    ks, counts = np.array([0, 1, 2, 5]), np.array([10**9, 10**6, 10**5, 10**3])
    interval = bootstrap(ks, counts, resamples=1000)  # 10⁹ scalars: instant
    assert interval.h_low <= fit(ks, counts).h <= interval.h_high


def binomial_shaped(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The sign-floating regime (Theorem D.33): every scalar flips many times, K ~ Binomial."""
    return histogram(rng.binomial(40, 0.5, size=n))


def test_goodness_of_fit_accepts_a_geometric_and_rejects_a_binomial_histogram():
    rng = np.random.default_rng(3)
    geometric = goodness_of_fit(*histogram(simulate_zig(0.4, 0.7, 50_000, rng)))
    assert geometric.dof >= 3 and geometric.p_value > 0.01
    floating = goodness_of_fit(*binomial_shaped(50_000, rng))
    assert floating.p_value < 1e-6


def test_the_floating_test_separates_lock_in_from_floating():
    rng = np.random.default_rng(4)
    lock_in = floating_test(*histogram(simulate_zig(0.4, 0.7, 50_000, rng)))
    assert lock_in.decision == "lock-in" and lock_in.p_value > 0.01
    assert lock_in.shape == pytest.approx(1.0, abs=0.1)
    floating = floating_test(*binomial_shaped(50_000, rng))
    assert floating.decision == "floating" and floating.shape > 5 and floating.p_value < 1e-6


def test_a_histogram_without_flips_fits_zero_and_tests_as_lock_in():
    fitted = fit([0], [1000])
    assert (fitted.h, fitted.g) == (0.0, 0.0)
    assert floating_test([0], [1000]).decision == "lock-in"


def test_vectorised_per_tensor_fits_equal_the_one_at_a_time_fit():
    import pandas as pd

    from signlock.analysis.tables import per_tensor_fits

    rng = np.random.default_rng(5)
    frames = []
    for trial in ("a", "b"):
        for tensor, (h, g) in {"w1": (0.2, 0.5), "w2": (0.01, 0.0), "w3": (0.0, 0.0)}.items():
            ks, counts = histogram(simulate_zig(h, g, 3000, rng))
            frames.append(
                pd.DataFrame({"trial": trial, "tensor": tensor, "k": ks, "count": counts})
            )
    flips = pd.concat(frames, ignore_index=True)
    table = per_tensor_fits(flips).set_index(["trial", "tensor"])
    for (trial, tensor), hist in flips.groupby(["trial", "tensor"]):
        one = fit(hist["k"], hist["count"])
        assert table.loc[(trial, tensor), "h_hat"] == pytest.approx(one.h)
        assert table.loc[(trial, tensor), "g_hat"] == pytest.approx(one.g)
        assert table.loc[(trial, tensor), "n"] == one.n
