"""FlatSignTracker (the flat layout) against a slow reference written line by line from
Definition 3.2 / Theorem 3.6.

Trajectories are written into real tensors and the tracker observes them after every "step";
the reference reads back the values the tensors actually stored (after rounding to their dtype).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from signlock.trainables._sign_kernel import Phase, encode
from signlock.trainables.errors import ConfigError
from signlock.trainables.flat_tracker import FlatSignTracker
from signlock.trainables.tracker import POOLED, sample_coordinates

INF = math.inf
# the paper's; an exactly representable pair; a pair whose float32 roundings lie outside [ε, ρ]
THRESHOLDS = [(1e-3, 1e-4), (2.0**-10, 2.0**-13), (1.1e-3, 1.1e-4)]
DTYPES = [torch.float32, torch.bfloat16, torch.float64, torch.float16]
SHAPES = [(1,), (3,), (2, 3), (2, 1, 2)]


# ----- slow reference (pure Python over one scalar's stored trajectory) -----------------------


def sign(x: float) -> int:
    return 1 if x >= 0 else -1  # sign(0) = sign(-0.0) = +1


@dataclass
class Reference:
    k: int
    tau1: int
    crossings: list[int]  # t with sign(w_{t+1}) != sign(w_t)
    band_skips: list[int]
    flipped_vs_init: bool


def reference(w: list[float], rho: float, eps: float) -> Reference:
    """Definition 3.2 with inf ∅ = ∞: σ0 = inf{t ≥ 0: |w_t| ≥ ρ},
    τ_k = inf{t > σ_{k−1}: |w_t| ≤ ε}, σ_k = inf{t > τ_k: |w_t| ≥ ρ}; K as in Theorem 3.6."""
    T = len(w) - 1

    def first_time(start: float, condition) -> float:
        if start == INF:
            return INF
        return next((t for t in range(int(start), T + 1) if condition(w[t])), INF)

    def outer(x: float) -> bool:
        return abs(x) >= rho

    def band(x: float) -> bool:
        return abs(x) <= eps

    sigma = [first_time(0, outer)]
    tau = [INF]  # tau[0] unused
    while sigma[-1] != INF:
        tau.append(first_time(sigma[-1] + 1, band))
        sigma.append(first_time(tau[-1] + 1, outer))
    k_eff = sum(
        1
        for k in range(1, len(sigma))
        if sigma[k] <= T and sign(w[sigma[k]]) != sign(w[sigma[k - 1]])
    )
    tau1 = tau[1] if len(tau) > 1 and tau[1] <= T else -1
    crossings = [t for t in range(T) if sign(w[t + 1]) != sign(w[t])]
    band_skips = [t for t in crossings if abs(w[t]) > eps and abs(w[t + 1]) > eps]
    return Reference(k_eff, int(tau1), crossings, band_skips, sign(w[T]) != sign(w[0]))


# ----- trajectories and driving the tracker ---------------------------------------------------


def special_values(rho: float, eps: float) -> list[float]:
    near = []
    for x in (rho, eps):
        x32 = np.float32(x)
        near += [
            float(np.nextafter(x32, np.float32(0))),
            float(x32),
            float(np.nextafter(x32, np.float32(1))),
        ]
    base = [0.0, -0.0, rho, eps, eps / 2, (rho + eps) / 2, 2 * rho, 5e-3, *near]
    return base + [-x for x in base]


def make_trajectories(
    shapes: list[tuple[int, ...]], steps: int, seed: int, rho: float, eps: float
) -> list[np.ndarray]:
    """Per tensor an array (steps+1, numel): random walks of several step sizes, some starting in
    the band, some confined below ρ, sprinkled with exact zeros, −0.0, ±ρ, ±ε and neighbours."""
    rng = np.random.default_rng(seed)
    specials = np.array(special_values(rho, eps))
    out = []
    for shape in shapes:
        n = math.prod(shape)
        scale = rng.choice([eps / 3, rho / 4, rho, 3 * rho], size=n)
        in_band = rng.random(n) < 0.3
        start = np.where(in_band, rng.uniform(-eps, eps, n), rng.uniform(-3, 3, n) * rho)
        walk = start + np.cumsum(rng.normal(size=(steps + 1, n)) * scale, axis=0)
        walk[0] = start
        confined = rng.random(n) < 0.15
        walk[:, confined] = rng.uniform(-rho / 2, rho / 2, size=(steps + 1, int(confined.sum())))
        special = rng.random((steps + 1, n)) < rng.uniform(0, 0.4)
        walk[special] = rng.choice(specials, size=int(special.sum()))
        out.append(walk)
    return out


def write(tensors: list[torch.Tensor], trajectories: list[np.ndarray], t: int) -> None:
    with torch.no_grad():
        for tensor, trajectory in zip(tensors, trajectories, strict=True):
            values = torch.tensor(trajectory[t], dtype=torch.float64).reshape(tensor.shape)
            tensor.copy_(values)


def stored(tensor: torch.Tensor) -> list[float]:
    return tensor.detach().to(torch.float64).reshape(-1).tolist()


@dataclass
class Run:
    tracker: FlatSignTracker
    tensors: list[torch.Tensor]
    history: list[list[list[float]]]  # [tensor][t] -> stored flat values


def start_run(shapes, dtypes, trajectories, tracker=FlatSignTracker, **kwargs) -> Run:
    tensors = [
        torch.nn.Parameter(torch.zeros(s, dtype=d)) for s, d in zip(shapes, dtypes, strict=True)
    ]
    write(tensors, trajectories, 0)
    named = [(f"t{i}", p) for i, p in enumerate(tensors)]
    return Run(tracker(named, **kwargs), tensors, [[stored(p)] for p in tensors])


def advance(run: Run, trajectories: list[np.ndarray], t: int) -> None:
    write(run.tensors, trajectories, t)
    for history, tensor in zip(run.history, run.tensors, strict=True):
        history.append(stored(tensor))
    run.tracker.observe()


def references(run: Run, rho: float, eps: float) -> list[list[Reference]]:
    """Per tensor, the reference of every tracked coordinate (sampled ones only when sampling)."""
    out = []
    for history, index in zip(run.history, run.tracker.tracked_indices(), strict=True):
        series = np.array(history)
        out.append([reference(list(series[:, i]), rho, eps) for i in index.tolist()])
    return out


def reference_fit(ks: list[int]) -> tuple[float, float]:
    positive = [k for k in ks if k > 0]
    if not positive:
        return 0.0, 0.0
    mean = sum(positive) / len(positive)
    return len(positive) / len(ks), (1 - 1 / mean if mean > 1 else 0.0)


def expected_row(name: str, refs: list[Reference], steps: int) -> dict[str, object]:
    n = len(refs)
    ks = [r.k for r in refs]
    crossings = sum(len(r.crossings) for r in refs)
    skips = sum(len(r.band_skips) for r in refs)
    h_hat, g_hat = reference_fit(ks)
    return {
        "tensor": name,
        "n_tracked": n,
        "flip_vs_init": sum(r.flipped_vs_init for r in refs) / n,
        "flip_mean": crossings / (n * steps) if steps else 0.0,
        "zero_crossings": crossings,
        "band_skipping_crossings": skips,
        "band_skipping_fraction": skips / crossings if crossings else math.nan,
        "h_direct": sum(r.tau1 >= 0 for r in refs) / n,
        "h_hat": h_hat,
        "g_hat": g_hat,
        "k_mean": sum(ks) / n,
    }


def assert_matches_reference(run: Run, rho: float, eps: float) -> None:
    refs = references(run, rho, eps)
    flat = [r for per_tensor in refs for r in per_tensor]
    tracker = run.tracker
    assert tracker.k_values().tolist() == [r.k for r in flat]
    assert tracker.first_hit_times().tolist() == [r.tau1 for r in flat]
    expected = [expected_row(f"t{i}", r, tracker.steps) for i, r in enumerate(refs)]
    expected.append(expected_row(POOLED, flat, tracker.steps))
    pd.testing.assert_frame_equal(
        tracker.per_tensor_stats(),
        pd.DataFrame(expected).astype(
            {"n_tracked": "int64", "zero_crossings": "int64", "band_skipping_crossings": "int64"}
        ),
        check_exact=False,
        rtol=1e-12,
    )
    histogram = tracker.k_histogram()
    for i, per_tensor in enumerate(refs):
        rows = histogram[histogram.tensor == f"t{i}"]
        assert dict(zip(rows.k, rows["count"], strict=True)) == Counter(r.k for r in per_tensor)
    pooled = histogram[histogram.tensor == POOLED]
    assert dict(zip(pooled.k, pooled["count"], strict=True)) == Counter(r.k for r in flat)


# ----- equivalence with the reference -----------------------------------------------------------


@st.composite
def scenarios(draw, max_steps: int = 60, backends: tuple[str, ...] = ("numpy", "torch")):
    n_tensors = draw(st.integers(1, 4))
    return {
        "shapes": [draw(st.sampled_from(SHAPES)) for _ in range(n_tensors)],
        "dtypes": [draw(st.sampled_from(DTYPES)) for _ in range(n_tensors)],
        "steps": draw(st.integers(0, max_steps)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "thresholds": draw(st.sampled_from(THRESHOLDS)),
        "backend": draw(st.sampled_from(backends)),
        "fused": draw(st.booleans()),  # the compiled dense pass (CUDA's default) or eager ops
    }


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_matches_reference(sc):
    rho, eps = sc["thresholds"]
    trajectories = make_trajectories(sc["shapes"], sc["steps"], sc["seed"], rho, eps)
    kwargs = {"rho": rho, "eps": eps, "backend": sc["backend"], "fused": sc["fused"]}
    run = start_run(sc["shapes"], sc["dtypes"], trajectories, **kwargs)
    for t in range(1, sc["steps"] + 1):
        advance(run, trajectories, t)
    assert run.tracker.steps == sc["steps"]
    assert run.tracker.n_tracked == sum(math.prod(s) for s in sc["shapes"])
    assert_matches_reference(run, rho, eps)


@settings(max_examples=60, deadline=None)
@given(scenarios(max_steps=40), st.integers(1, 5), st.integers(0, 1000))
def test_sampled_mode_matches_reference(sc, per_tensor, sample_seed):
    rho, eps = sc["thresholds"]
    trajectories = make_trajectories(sc["shapes"], sc["steps"], sc["seed"], rho, eps)
    kwargs = {
        "rho": rho,
        "eps": eps,
        "sample_per_tensor": per_tensor,
        "sample_seed": sample_seed,
        "backend": sc["backend"],
        "fused": sc["fused"],
    }
    run = start_run(sc["shapes"], sc["dtypes"], trajectories, **kwargs)
    for t in range(1, sc["steps"] + 1):
        advance(run, trajectories, t)
    for index, shape in zip(run.tracker.tracked_indices(), sc["shapes"], strict=True):
        assert len(index) == min(per_tensor, math.prod(shape))
    assert run.tracker.n_tracked == sum(len(i) for i in run.tracker.tracked_indices())
    assert_matches_reference(run, rho, eps)


@settings(max_examples=60, deadline=None)
@given(scenarios(max_steps=40), st.floats(0, 1), st.sampled_from([None, 2]))
def test_state_dict_round_trip_continues_identically(sc, cut_fraction, per_tensor):
    rho, eps = sc["thresholds"]
    steps = sc["steps"]
    cut = int(cut_fraction * steps)
    trajectories = make_trajectories(sc["shapes"], steps, sc["seed"], rho, eps)
    kwargs = {
        "rho": rho,
        "eps": eps,
        "sample_per_tensor": per_tensor,
        "sample_seed": 5,
        "backend": sc["backend"],
    }
    whole = start_run(sc["shapes"], sc["dtypes"], trajectories, **kwargs)
    for t in range(1, cut + 1):
        advance(whole, trajectories, t)
    whole.tracker.window_stats()
    buffer = io.BytesIO()
    torch.save(whole.tracker.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    # a fresh tracker over fresh tensors holding the checkpointed weights
    resumed = start_run(sc["shapes"], sc["dtypes"], [tr[cut:] for tr in trajectories], **kwargs)
    resumed.tracker.load_state_dict(state)
    for t in range(cut + 1, steps + 1):
        advance(whole, trajectories, t)
        write(resumed.tensors, trajectories, t)
        resumed.tracker.observe()
    a, b = whole.tracker, resumed.tracker
    assert b.steps == a.steps == steps
    assert torch.equal(a.k_values(), b.k_values())
    assert torch.equal(a.first_hit_times(), b.first_hit_times())
    pd.testing.assert_frame_equal(a.per_tensor_stats(), b.per_tensor_stats())
    pd.testing.assert_frame_equal(a.k_histogram(), b.k_histogram())
    assert_matches_reference(whole, rho, eps)


# ----- hand-written trajectories (expected values worked out by hand) ---------------------------

RHO2, EPS2 = 2.0**-10, 2.0**-13  # exactly representable: equality with ρ and ε is exercised


@pytest.mark.parametrize(
    ("trajectory", "k", "tau1", "crossings", "band_skips"),
    [
        ([2 * RHO2, EPS2 / 2, -2 * RHO2], 1, 1, 1, 0),  # outer → band → opposite outer
        ([RHO2, EPS2, -RHO2], 1, 1, 1, 0),  # the same at exactly ρ and ε
        ([2 * RHO2, -2 * RHO2], 0, -1, 1, 1),  # jumps over the band: not a boundary hit
        ([EPS2 / 2, -2 * RHO2, EPS2, 2 * RHO2], 1, 2, 2, 0),  # starts in the band: σ0 = 1
        ([2 * RHO2, EPS2 / 2, 2 * RHO2, EPS2 / 2, -2 * RHO2], 1, 1, 1, 0),  # same-side re-entry
        # sign at σ1 compared with σ0, not with the latest sign seen: K = 0 after two crossings
        ([2 * RHO2, EPS2 / 2, -EPS2 / 2, RHO2 / 2, 2 * RHO2], 0, 1, 2, 0),
        ([0.0, -0.0, 0.0, -0.0], 0, -1, 0, 0),  # sign(−0.0) = sign(0) = +1
        ([-0.0, -EPS2, -0.0, RHO2 / 2], 0, -1, 2, 0),  # −0.0 ↔ negative crosses zero
        ([RHO2 / 2, -RHO2 / 2, RHO2 / 2], 0, -1, 2, 2),  # never outer: no σ0, still crossings
        ([RHO2, EPS2 * 1.5, -RHO2], 0, -1, 1, 1),  # ε < |w| < ρ: no boundary hit
        ([2 * RHO2, 0.0, -2 * RHO2, -0.0, 2 * RHO2], 2, 1, 2, 0),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_hand_written_trajectories(trajectory, k, tau1, crossings, band_skips, backend):
    trajectories = [np.array(trajectory).reshape(-1, 1)]
    run = start_run([(1,)], [torch.float32], trajectories, rho=RHO2, eps=EPS2, backend=backend)
    for t in range(1, len(trajectory)):
        advance(run, trajectories, t)
    stats = run.tracker.per_tensor_stats().iloc[0]
    assert run.tracker.k_values().tolist() == [k]
    assert run.tracker.first_hit_times().tolist() == [tau1]
    assert stats.zero_crossings == crossings
    assert stats.band_skipping_crossings == band_skips
    assert_matches_reference(run, RHO2, EPS2)


def test_window_stats_cover_the_steps_since_the_last_call():
    rho, eps = THRESHOLDS[0]
    shapes = [(4, 5), (7,)]
    trajectories = make_trajectories(shapes, 30, seed=11, rho=rho, eps=eps)
    run = start_run(shapes, [torch.float32, torch.bfloat16], trajectories, rho=rho, eps=eps)
    assert run.tracker.window_stats()["step_flip_rate"] == 0.0
    windows = [(1, 7), (8, 8), (9, 30)]
    for first, last in windows:
        for t in range(first, last + 1):
            advance(run, trajectories, t)
        got = run.tracker.window_stats()
        refs = [r for per_tensor in references(run, rho, eps) for r in per_tensor]
        n = len(refs)
        crossings = sum(first - 1 <= t <= last - 1 for r in refs for t in r.crossings)
        assert got["step_flip_rate"] == pytest.approx(crossings / (n * (last - first + 1)))
        assert got["flip_vs_init"] == pytest.approx(sum(r.flipped_vs_init for r in refs) / n)
        assert got["boundary_hit_fraction"] == pytest.approx(sum(r.tau1 >= 0 for r in refs) / n)
        crossings_so_far = sum(t <= last - 1 for r in refs for t in r.crossings)
        assert got["flip_mean"] == pytest.approx(crossings_so_far / (n * last))
    assert run.tracker.window_stats()["step_flip_rate"] == 0.0


def test_tensor_window_stats_follow_each_tensor_against_the_reference():
    rho, eps = THRESHOLDS[0]
    shapes = [(4, 5), (7,)]
    trajectories = make_trajectories(shapes, 30, seed=12, rho=rho, eps=eps)
    run = start_run(shapes, [torch.float32, torch.bfloat16], trajectories, rho=rho, eps=eps)
    for first, last in [(1, 9), (10, 30)]:
        for t in range(first, last + 1):
            advance(run, trajectories, t)
        rows = run.tracker.tensor_window_stats()
        assert [r["tensor"] for r in rows] == run.tracker.tensor_names
        for row, refs in zip(rows, references(run, rho, eps), strict=True):
            n = len(refs)
            window = sum(first - 1 <= t <= last - 1 for r in refs for t in r.crossings)
            assert row["n_tracked"] == n
            assert row["step_flip_rate"] == pytest.approx(window / (n * (last - first + 1)))
            assert row["flip_vs_init"] == pytest.approx(sum(r.flipped_vs_init for r in refs) / n)
            assert row["boundary_hit_fraction"] == pytest.approx(sum(r.tau1 >= 0 for r in refs) / n)
            assert row["k_mean"] == pytest.approx(sum(r.k for r in refs) / n)


# ----- tables, schema, summary ------------------------------------------------------------------


def test_tables_schema_and_pooled_rows():
    rho, eps = THRESHOLDS[0]
    shapes = [(6, 5), (3,), (2, 2)]
    trajectories = make_trajectories(shapes, 25, seed=3, rho=rho, eps=eps)
    run = start_run(shapes, [torch.float32] * 3, trajectories, rho=rho, eps=eps)
    for t in range(1, 26):
        advance(run, trajectories, t)
    tracker = run.tracker

    histogram = tracker.k_histogram()
    assert list(histogram.columns) == ["tensor", "k", "count"]
    assert histogram.k.dtype == np.int64 and histogram["count"].dtype == np.int64
    assert all(isinstance(name, str) for name in histogram.tensor)
    assert (histogram["count"] > 0).all()
    assert histogram.equals(histogram.sort_values(["tensor", "k"]).reset_index(drop=True))
    per_tensor = histogram[histogram.tensor != POOLED].groupby("k")["count"].sum()
    pooled = histogram[histogram.tensor == POOLED].set_index("k")["count"]
    assert per_tensor.to_dict() == pooled.to_dict()
    assert pooled.sum() == tracker.n_tracked

    stats = tracker.per_tensor_stats()
    assert list(stats.tensor) == ["t0", "t1", "t2", POOLED]
    body, total = stats.iloc[:-1], stats.iloc[-1]
    for column in ["n_tracked", "zero_crossings", "band_skipping_crossings"]:
        assert stats[column].dtype == np.int64
        assert body[column].sum() == total[column]
    weights = body.n_tracked / body.n_tracked.sum()
    for column in ["flip_vs_init", "flip_mean", "h_direct", "h_hat", "k_mean"]:
        assert (body[column] * weights).sum() == pytest.approx(total[column])

    summary = tracker.summary()
    assert set(summary) == {
        "final_flip_ratio",
        "flip_mean",
        "h_hat",
        "g_hat",
        "h_direct",
        "k_mean",
        "zero_crossings",
        "band_skipping_fraction",
        "n_tracked",
        "steps",
    }
    counts = {"steps", "zero_crossings", "n_tracked"}
    assert all(type(summary[key]) is int for key in counts)
    assert all(type(summary[key]) is float for key in summary.keys() - counts)
    assert summary["steps"] == 25 and summary["n_tracked"] == tracker.n_tracked
    assert summary["final_flip_ratio"] == pytest.approx(float(total["flip_vs_init"]))
    for key in summary.keys() - {"steps", "final_flip_ratio"}:
        assert summary[key] == pytest.approx(float(total[key]), nan_ok=True)


def test_before_any_step():
    tracker = FlatSignTracker([("w", torch.tensor([2e-3, 5e-5, -0.0]))])
    assert tracker.steps == 0
    assert tracker.summary()["flip_mean"] == 0.0
    assert math.isnan(tracker.summary()["band_skipping_fraction"])
    assert tracker.window_stats() == {
        "flip_vs_init": 0.0,
        "flip_mean": 0.0,
        "step_flip_rate": 0.0,
        "boundary_hit_fraction": 0.0,
    }


# ----- tensors, devices, dtypes -----------------------------------------------------------------


def test_non_contiguous_and_plain_tensors():
    base = torch.zeros(4, 3)
    view = base.t()  # non-contiguous, updated in place through ``base``
    plain = torch.zeros(5)
    rng = np.random.default_rng(0)
    tracker = FlatSignTracker([("view", view), ("plain", plain)])
    history = [stored(view) + stored(plain)]
    for _ in range(30):
        base.copy_(torch.from_numpy(rng.normal(0, 2e-3, (4, 3))))
        plain.copy_(torch.from_numpy(rng.normal(0, 2e-3, 5)))
        tracker.observe()
        history.append(stored(view) + stored(plain))
    series = np.array(history)
    expected = [reference(list(series[:, i]), 1e-3, 1e-4) for i in range(series.shape[1])]
    assert tracker.k_values().tolist() == [r.k for r in expected]
    assert tracker.per_tensor_stats().zero_crossings.iloc[-1] == sum(
        len(r.crossings) for r in expected
    )


def test_replaced_tensor_is_detected():
    p = torch.nn.Parameter(torch.zeros(3))
    tracker = FlatSignTracker([("p", p)])
    p.data = torch.ones(3)
    with pytest.raises(RuntimeError, match="replaced"):
        tracker.observe()


def run_on(device: str, shapes, dtypes, trajectories, steps: int, **kwargs) -> FlatSignTracker:
    tensors = [torch.zeros(s, device=device, dtype=d) for s, d in zip(shapes, dtypes, strict=True)]
    write(tensors, trajectories, 0)
    tracker = FlatSignTracker([(f"t{i}", p) for i, p in enumerate(tensors)], **kwargs)
    for t in range(1, steps + 1):
        write(tensors, trajectories, t)
        tracker.observe()
    return tracker


def assert_same_state(a: FlatSignTracker, b: FlatSignTracker) -> None:
    """Every per-scalar field of the checkpoint (K, τ1, crossings, band skips, phase codes, last
    values, initial signs) bit for bit, and the tables built from them."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        other = state_b[key]
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            assert all(torch.equal(x, y.cpu()) for x, y in zip(value, other, strict=True)), key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, other.cpu()), key
        else:
            assert value == other, key
    pd.testing.assert_frame_equal(a.per_tensor_stats(), b.per_tensor_stats())
    pd.testing.assert_frame_equal(a.k_histogram(), b.k_histogram())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on a GPU machine)")
@pytest.mark.parametrize("seed", range(12))
def test_cuda_matches_cpu_on_random_updates(seed):
    """The same random update sequence (sizes around a multiple of 8 and across dtypes, some
    sampled) tracked on CUDA and on CPU ends in bit-identical state."""
    rng = np.random.default_rng(seed)
    rho, eps = THRESHOLDS[seed % len(THRESHOLDS)]
    shapes = [tuple(int(x) for x in rng.integers(1, 40, size=rng.integers(1, 3))) for _ in range(4)]
    shapes.append((int(rng.integers(3000, 9000)),))
    dtypes = [
        [torch.float32, torch.bfloat16, torch.float16, torch.float64][int(i)]
        for i in rng.integers(0, 4, size=len(shapes))
    ]
    steps = int(rng.integers(20, 80))
    trajectories = make_trajectories(shapes, steps, seed=seed, rho=rho, eps=eps)
    sample = None if seed % 3 else int(rng.integers(5, 200))
    kwargs = {"rho": rho, "eps": eps, "sample_per_tensor": sample, "sample_seed": seed}
    on_cpu = run_on("cpu", shapes, dtypes, trajectories, steps, **kwargs)
    on_cuda = run_on("cuda", shapes, dtypes, trajectories, steps, **kwargs)
    assert_same_state(on_cpu, on_cuda)


def test_cuda_paths_on_cpu_end_in_identical_state():
    """CPU-runnable regression for the CUDA path: the torch sparse backend with the fused
    (compiled) dense pass, as CUDA groups run, against the numpy backend with eager passes, on
    random sequences like the CUDA test's (float64 included, and −0.0 among the values)."""
    rng = np.random.default_rng(3)
    shapes = [(13, 7), (8,), (5001,), (1,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    trajectories = make_trajectories(shapes, 50, seed=3, rho=1e-3, eps=1e-4)
    for sample in (None, int(rng.integers(5, 200))):
        runs = [
            run_on("cpu", shapes, dtypes, trajectories, 50, sample_per_tensor=sample, **kw)
            for kw in (
                {"backend": "numpy", "fused": False},
                {"backend": "torch", "fused": True},
                {"backend": "torch", "fused": False},
            )
        ]
        assert_same_state(runs[0], runs[1])
        assert_same_state(runs[0], runs[2])


@pytest.mark.parametrize("fused", [False, True])
def test_candidates_processed_in_small_chunks_match_the_reference(monkeypatch, fused):
    """The first observation flags nearly every scalar (σ0); chunking bounds the temporaries
    and must not change a result."""
    monkeypatch.setattr("signlock.trainables._sign_kernel.CANDIDATE_CHUNK_WORDS", 3)
    shapes, dtypes = [(9, 11), (40,)], [torch.float32, torch.bfloat16]
    trajectories = make_trajectories(shapes, 30, seed=5, rho=1e-3, eps=1e-4)
    run = start_run(shapes, dtypes, trajectories, backend="torch", fused=fused)
    for t in range(1, 31):
        advance(run, trajectories, t)
    assert_matches_reference(run, 1e-3, 1e-4)


# ----- sampling ---------------------------------------------------------------------------------


def test_sample_is_deterministic_per_seed():
    tensors = [("a", torch.zeros(50, 40)), ("b", torch.zeros(7)), ("c", torch.zeros(3000))]
    first = FlatSignTracker(tensors, sample_per_tensor=16, sample_seed=4).tracked_indices()
    again = FlatSignTracker(tensors, sample_per_tensor=16, sample_seed=4).tracked_indices()
    other = FlatSignTracker(tensors, sample_per_tensor=16, sample_seed=5).tracked_indices()
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    for index, (_, tensor) in zip(first, tensors, strict=True):
        assert len(index) == min(16, tensor.numel())
        assert torch.equal(index, torch.unique(index))  # sorted, no repeats
        assert int(index.min()) >= 0 and int(index.max()) < tensor.numel()


@pytest.mark.parametrize(("numel", "m"), [(10, 3), (40, 4)])  # randperm branch, stream branch
def test_sample_coordinates_are_uniform(numel, m):
    generator = torch.Generator().manual_seed(0)
    draws = 4000
    counts = np.zeros(numel)
    for _ in range(draws):
        index = sample_coordinates(numel, m, generator)
        assert len(torch.unique(index)) == m
        counts[index.numpy()] += 1
    expected = draws * m / numel
    assert np.abs(counts - expected).max() < 5 * math.sqrt(expected)


# ----- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rho": 1e-4, "eps": 1e-4}, "tracker.rho"),
        ({"rho": 1e-5, "eps": 1e-4}, "tracker.rho"),
        ({"rho": math.inf}, "tracker.rho"),
        ({"eps": 0.0}, "tracker.eps"),
        ({"eps": -1e-4}, "tracker.eps"),
        ({"sample_per_tensor": 0}, "tracker.sample_per_tensor"),
        ({"backend": "cupy"}, "tracker.backend"),
        ({"backend": None}, "tracker.backend"),
    ],
)
def test_invalid_config_raises(kwargs, field):
    with pytest.raises(ConfigError) as info:
        FlatSignTracker([("w", torch.zeros(3))], **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(("backend", "xp"), [("auto", np), ("numpy", np), ("torch", torch)])
def test_backend_reaches_the_groups(backend, xp):
    tracker = FlatSignTracker(
        [("w", torch.zeros(3)), ("d", torch.zeros(2, dtype=torch.float64))], backend=backend
    )
    assert tracker.backend == backend
    assert [group.sparse.xp for group in tracker._groups] == [xp, xp]


def test_numpy_backend_needs_cpu_tensors():
    with pytest.raises(ConfigError) as info:
        FlatSignTracker([("w", torch.zeros(3, device="meta"))], backend="numpy")
    assert info.value.field == "tracker.backend"


@pytest.mark.parametrize(
    "named",
    [
        [],
        [("w", torch.zeros(2)), ("w", torch.zeros(2))],
        [("i", torch.zeros(2, dtype=torch.int64))],
        [("e", torch.zeros(0))],
    ],
    ids=["empty", "duplicate", "integer", "no-elements"],
)
def test_invalid_params_raise(named):
    with pytest.raises(ConfigError):
        FlatSignTracker(named)


def test_load_state_dict_rejects_a_different_tracker():
    tracker = FlatSignTracker([("a", torch.zeros(3)), ("b", torch.zeros(2))])
    state = tracker.state_dict()
    with pytest.raises(ValueError, match="tracks tensors"):
        FlatSignTracker([("a", torch.zeros(3)), ("c", torch.zeros(2))]).load_state_dict(state)
    with pytest.raises(ValueError, match="sizes"):
        FlatSignTracker([("a", torch.zeros(3)), ("b", torch.zeros(4))]).load_state_dict(state)
    with pytest.raises(ValueError, match="rho"):
        FlatSignTracker([("a", torch.zeros(3)), ("b", torch.zeros(2))], rho=2e-3).load_state_dict(
            state
        )
    with pytest.raises(ValueError, match="sampling"):
        FlatSignTracker(
            [("a", torch.zeros(3)), ("b", torch.zeros(2))], sample_per_tensor=5
        ).load_state_dict(state)


def test_state_dict_codes_are_phase_and_outer_sign():
    """The checkpoint's ``code`` is phase + 3·[outer sign < 0]; a format change breaks resumes."""
    w = torch.tensor([2 * RHO2, -2 * RHO2, EPS2 / 2, 2 * RHO2])
    tracker = FlatSignTracker([("w", w)], rho=RHO2, eps=EPS2)
    assert tracker.state_dict()["code"].tolist() == [1, 4, 0, 1]
    w.copy_(torch.tensor([EPS2 / 2, -EPS2, -2 * RHO2, 2 * RHO2]))
    tracker.observe()
    expected = [
        encode(Phase.AWAIT_SIGMA, 0),
        encode(Phase.AWAIT_SIGMA, 1),
        encode(Phase.AWAIT_TAU, 1),
        encode(Phase.AWAIT_TAU, 0),
    ]
    assert tracker.state_dict()["code"].tolist() == expected == [2, 5, 4, 1]


def test_state_dict_holds_only_tensors_ints_and_names():
    state = FlatSignTracker(
        [("a", torch.zeros(3)), ("b", torch.zeros(2, 2))], sample_per_tensor=2
    ).state_dict()
    for key, value in state.items():
        if key == "names":
            assert value == ["a", "b"]
        else:
            assert isinstance(value, torch.Tensor | int), key
            assert not isinstance(value, torch.Tensor) or value.device.type == "cpu"
