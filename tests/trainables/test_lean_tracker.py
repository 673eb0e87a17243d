"""SignTracker (the lean layout: two bytes per tracked scalar) against the slow Definition 3.2
reference and against FlatSignTracker (the flat layout), step by step; its checkpoints and the
flat layout's."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from signlock.trainables._lean_kernel import (
    DENSE_BYTES_PER_SCALAR,
    K_SATURATED,
    RUN_BYTES,
    TAU1_ENTRY_BYTES,
)
from signlock.trainables.flat_tracker import FlatSignTracker
from signlock.trainables.tracker import SignTracker
from tests.trainables.test_tracker import (
    EPS2,
    RHO2,
    advance,
    assert_matches_reference,
    make_trajectories,
    scenarios,
    start_run,
    write,
)

LEGACY = Path(__file__).parent / "legacy_tracker"
# The flat-layout (version 1) checkpoint below was written by the flat tracker (then named
# SignTracker) from these trajectories, after FIXTURE_CUT of FIXTURE_STEPS observations.
FIXTURE = LEGACY / "flat_v1.pt"
FIXTURE_SHAPES = [(6, 5), (17,), (3, 2)]
FIXTURE_DTYPES = [torch.float32, torch.bfloat16, torch.float64]
FIXTURE_STEPS, FIXTURE_CUT, FIXTURE_SEED = 60, 35, 21


BACKENDS = ("native", "numpy", "torch")  # the lean tracker's; "native" is compiled here


def lean_kwargs(sc: dict) -> dict:
    rho, eps = sc["thresholds"]
    return {"rho": rho, "eps": eps, "backend": sc["backend"]}


@settings(max_examples=150, deadline=None)
@given(scenarios(backends=BACKENDS))
def test_matches_reference(sc):
    rho, eps = sc["thresholds"]
    trajectories = make_trajectories(sc["shapes"], sc["steps"], sc["seed"], rho, eps)
    run = start_run(sc["shapes"], sc["dtypes"], trajectories, SignTracker, **lean_kwargs(sc))
    for t in range(1, sc["steps"] + 1):
        advance(run, trajectories, t)
    assert run.tracker.n_tracked == sum(math.prod(s) for s in sc["shapes"])
    assert_matches_reference(run, rho, eps)


@settings(max_examples=50, deadline=None)
@given(scenarios(max_steps=40, backends=BACKENDS), st.integers(1, 5), st.integers(0, 1000))
def test_sampled_mode_matches_reference(sc, per_tensor, sample_seed):
    rho, eps = sc["thresholds"]
    trajectories = make_trajectories(sc["shapes"], sc["steps"], sc["seed"], rho, eps)
    kwargs = {**lean_kwargs(sc), "sample_per_tensor": per_tensor, "sample_seed": sample_seed}
    run = start_run(sc["shapes"], sc["dtypes"], trajectories, SignTracker, **kwargs)
    for t in range(1, sc["steps"] + 1):
        advance(run, trajectories, t)
    assert_matches_reference(run, rho, eps)


def assert_same_statistics(a: FlatSignTracker | SignTracker, b: SignTracker) -> None:
    assert torch.equal(a.k_values().long(), b.k_values().long())
    assert torch.equal(a.first_hit_times(), b.first_hit_times())
    pd.testing.assert_frame_equal(a.per_tensor_stats(), b.per_tensor_stats())
    pd.testing.assert_frame_equal(a.k_histogram(), b.k_histogram())
    assert pd.Series(a.summary()).equals(pd.Series(b.summary()))  # NaN where no crossings


@pytest.mark.parametrize("sample", [None, 7])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_public_method_agrees_with_the_flat_tracker_at_every_logged_step(sample, backend):
    shapes = [(13, 7), (8,), (501,), (1,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    trajectories = make_trajectories(shapes, 40, seed=3, rho=1e-3, eps=1e-4)
    kwargs = {"sample_per_tensor": sample, "sample_seed": 2}
    flat = start_run(shapes, dtypes, trajectories, FlatSignTracker, **kwargs)
    lean = start_run(shapes, dtypes, trajectories, SignTracker, backend=backend, **kwargs)
    for t in range(1, 41):
        advance(flat, trajectories, t)
        advance(lean, trajectories, t)
        if t % 10 == 0:
            assert flat.tracker.window_stats() == lean.tracker.window_stats()
            assert flat.tracker.tensor_window_stats() == lean.tracker.tensor_window_stats()
            assert_same_statistics(flat.tracker, lean.tracker)


def round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@settings(max_examples=40, deadline=None)
@given(scenarios(max_steps=40, backends=BACKENDS), st.floats(0, 1), st.sampled_from([None, 2]))
def test_state_round_trips_bit_exactly_and_continues_identically(sc, cut_fraction, per_tensor):
    rho, eps = sc["thresholds"]
    steps = sc["steps"]
    cut = int(cut_fraction * steps)
    trajectories = make_trajectories(sc["shapes"], steps, sc["seed"], rho, eps)
    kwargs = {**lean_kwargs(sc), "sample_per_tensor": per_tensor, "sample_seed": 5}
    whole = start_run(sc["shapes"], sc["dtypes"], trajectories, SignTracker, **kwargs)
    for t in range(1, cut + 1):
        advance(whole, trajectories, t)
    whole.tracker.window_stats()
    state = round_trip(whole.tracker.state_dict())
    resumed = start_run(
        sc["shapes"], sc["dtypes"], [tr[cut:] for tr in trajectories], SignTracker, **kwargs
    )
    resumed.tracker.load_state_dict(state)
    assert_same_state(resumed.tracker.state_dict(), whole.tracker.state_dict())
    for t in range(cut + 1, steps + 1):
        advance(whole, trajectories, t)
        write(resumed.tensors, trajectories, t)
        resumed.tracker.observe()
    assert_same_statistics(whole.tracker, resumed.tracker)
    assert_matches_reference(whole, rho, eps)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            assert all(torch.equal(x, y) for x, y in zip(value, b[key], strict=True)), key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def fixture_run(
    tracker: type[FlatSignTracker | SignTracker], trajectories: list[np.ndarray], **kwargs
):
    return start_run(FIXTURE_SHAPES, FIXTURE_DTYPES, trajectories, tracker, **kwargs)


def test_a_flat_layout_checkpoint_resumes_in_the_lean_layout():
    """The committed version-1 checkpoint (the flat layout's) loads into SignTracker, which
    then continues exactly as the flat tracker that was never interrupted."""
    trajectories = make_trajectories(FIXTURE_SHAPES, FIXTURE_STEPS, FIXTURE_SEED, 1e-3, 1e-4)
    state = torch.load(FIXTURE, weights_only=True)
    assert state["version"] == 1 and state["steps"] == FIXTURE_CUT
    uninterrupted = fixture_run(FlatSignTracker, trajectories)
    for t in range(1, FIXTURE_STEPS + 1):
        advance(uninterrupted, trajectories, t)
    resumed = fixture_run(SignTracker, [tr[FIXTURE_CUT:] for tr in trajectories])
    resumed.tracker.load_state_dict(state)
    for t in range(FIXTURE_CUT + 1, FIXTURE_STEPS + 1):
        write(resumed.tensors, trajectories, t)
        resumed.tracker.observe()
    assert_same_statistics(uninterrupted.tracker, resumed.tracker)
    assert resumed.tracker.summary()["zero_crossings"] > 0  # the fixture saw real events


def write_flat_fixture() -> None:  # how FIXTURE was made (kept to regenerate it)
    trajectories = make_trajectories(FIXTURE_SHAPES, FIXTURE_STEPS, FIXTURE_SEED, 1e-3, 1e-4)
    run = fixture_run(FlatSignTracker, trajectories)
    for t in range(1, FIXTURE_CUT + 1):
        advance(run, trajectories, t)
    torch.save(run.tracker.state_dict(), FIXTURE)


@pytest.mark.parametrize("flips", [K_SATURATED + 3, 65_537])
def test_k_counts_past_a_byte_and_past_16_bits_exactly(flips):
    """One scalar alternating outer → band → opposite outer: K grows by one per two steps."""
    w = torch.tensor([2 * RHO2])
    tracker = SignTracker([("w", w)], rho=RHO2, eps=EPS2)
    sign = 1.0
    for _ in range(flips):
        w.fill_(EPS2 / 2)
        tracker.observe()
        sign = -sign
        w.fill_(sign * 2 * RHO2)
        tracker.observe()
    assert tracker.k_values().tolist() == [flips]
    assert tracker.per_tensor_stats().k_mean.iloc[-1] == flips
    state = round_trip(tracker.state_dict())
    again = SignTracker([("w", w.clone())], rho=RHO2, eps=EPS2)
    again.load_state_dict(state)
    assert again.k_values().tolist() == [flips]


def test_resident_state_is_two_bytes_per_scalar_shaped_like_each_tensor():
    named = [("a", torch.zeros(64, 33)), ("b", torch.zeros(5, dtype=torch.bfloat16))]
    tracker = SignTracker(named)
    dense = sum(g.state.nbytes + g.k.nbytes for g in tracker._groups)
    assert dense / tracker.n_tracked == DENSE_BYTES_PER_SCALAR <= 4
    assert tracker.host_table_bytes() == 0  # nothing has happened yet
    state = tracker.state_dict()
    assert [s.shape for s in state["state"]] == [t.shape for _, t in named]
    assert [s.dtype for s in state["k"]] == [torch.uint8, torch.uint8]


def test_resident_bytes_with_scratch_and_host_tables_stay_within_four_per_scalar():
    """A 4M-scalar tensor, a third of whose scalars hit the band: everything the tracker holds
    (state and K bytes, the fixed packing scratch, 4 bytes per τ1 entry) is under 4 bytes per
    scalar, and exactly what the layout table says."""
    w = torch.full((1 << 22,), 2e-3)
    tracker = SignTracker([("w", w)])
    w[: w.numel() // 3] = 5e-5
    tracker.observe()
    storages = {t.untyped_storage().data_ptr(): t.nbytes for t in tracker.resident_tensors()}
    held = sum(storages.values()) + tracker.host_table_bytes()
    assert tracker.summary()["h_direct"] == pytest.approx(1 / 3, abs=1e-5)
    assert held / tracker.n_tracked <= 4, held / tracker.n_tracked
    hits = w.numel() // 3
    assert tracker.host_table_bytes() == hits * TAU1_ENTRY_BYTES + RUN_BYTES


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_boundaries_and_batched_passes_match_the_reference(monkeypatch, backend):
    """Dense chunks of 64 scalars and state-machine passes of 16: tensors read in place across
    several chunks, small ones packed together, a tail, other dtypes packed and converted."""
    monkeypatch.setattr("signlock.trainables._lean_kernel.PACKED_CHUNK", 64)
    monkeypatch.setattr("signlock.trainables._lean_kernel.SPARSE_CHUNK", 16)
    shapes = [(3, 64), (5,), (70,), (2, 64), (33,)]
    dtypes = [torch.float32, torch.float32, torch.float32, torch.bfloat16, torch.float64]
    trajectories = make_trajectories(shapes, 30, seed=11, rho=1e-3, eps=1e-4)
    run = start_run(shapes, dtypes, trajectories, SignTracker, backend=backend)
    for t in range(1, 31):
        advance(run, trajectories, t)
    assert_matches_reference(run, 1e-3, 1e-4)
    assert run.tracker.summary()["zero_crossings"] > 0


def test_auto_picks_the_compiled_pass_where_a_compiler_works(monkeypatch):
    assert {g.backend for g in SignTracker([("w", torch.zeros(3))])._groups} == {"native"}
    monkeypatch.setattr("signlock.trainables._native_flag.load", lambda: None)
    assert {g.backend for g in SignTracker([("w", torch.zeros(3))])._groups} == {"numpy"}
