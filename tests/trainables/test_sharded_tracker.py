"""The sharded sign tracker over 2 and 3 real gloo ranks (uneven dim-0 shards, one empty) equals
one SignTracker over the whole tensors, exactly; its per-rank checkpoints resume under another
world size."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from signlock.trainables.sharded_tracker import (
    ProcessGroupShards,
    ShardedSignTracker,
    TensorShard,
    dim0_start,
)
from signlock.trainables.tracker import SignTracker

SHAPES = {"wide": (7, 5), "narrow": (2, 3), "deep": (5, 2, 3)}  # "narrow" leaves rank 2 empty
STEPS, LOG_EVERY = 24, 6
RHO, EPS = 1e-3, 1e-4


def weight_path(name: str, t: int) -> torch.Tensor:
    """The weights at observation t: a random walk near the band, with exact zeros and the ρ
    and ε values themselves so every branch of Definition 3.2 is taken."""
    shape = SHAPES[name]
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    walk = torch.randn((t + 1, *shape), generator=generator, dtype=torch.float64).cumsum(0)
    w = (walk[t] * 6e-4).to(torch.float32)
    flat = w.view(-1)
    flat[t % flat.numel()] = (RHO, -EPS, 0.0, -0.0)[t % 4]
    return w


def rows_of(rows: int, world: int) -> list[int]:
    """FSDP2's split of dim 0: torch.chunk sizes, padded with empty pieces."""
    sizes = [piece.shape[0] for piece in torch.arange(rows).chunk(world)]
    return sizes + [0] * (world - len(sizes))


def shards_at(t: int, rank: int, world: int) -> dict[str, torch.Tensor]:
    out = {}
    for name, shape in SHAPES.items():
        sizes = rows_of(shape[0], world)
        begin = sum(sizes[:rank])
        out[name] = weight_path(name, t)[begin : begin + sizes[rank]].clone()
    return out


def make_tracker(locals_: dict[str, torch.Tensor], rank: int, world: int, sample):
    shards = []
    for name, local in locals_.items():
        shape = SHAPES[name]
        row_numel = int(torch.Size(shape[1:]).numel())
        start = dim0_start(rows_of(shape[0], world), rank, row_numel)
        shards.append(TensorShard(name, local, start, int(torch.Size(shape).numel())))
    return ShardedSignTracker(
        shards, ProcessGroupShards(), rho=RHO, eps=EPS, sample_per_tensor=sample, sample_seed=5
    )


def observe_span(tracker, locals_, rank, world, begin, rows, save_to):
    for t in range(begin + 1, STEPS + 1):
        for name, value in shards_at(t, rank, world).items():
            locals_[name].copy_(value)
        tracker.observe()
        if t % LOG_EVERY == 0:
            window = tracker.window_stats()
            tensors = tracker.tensor_window_stats()
            if rank == 0:
                rows.append({"t": t, **window, "tensors": tensors})
        if save_to is not None and t == STEPS // 2:  # right after a logged row, as trials do
            save_to.mkdir(exist_ok=True)
            torch.save(tracker.portable_state(), save_to / f"tracker-rank{rank}.pt")


def run_job(rank, world, out_dir: Path, tag, sample, resume_from):
    """Track the weight paths from 0 (saving portable state halfway), or from a checkpoint."""
    begin = 0 if resume_from is None else STEPS // 2
    locals_ = shards_at(begin, rank, world)
    tracker = make_tracker(locals_, rank, world, sample)
    if resume_from is not None:
        paths = sorted((out_dir.parent / resume_from).glob("tracker-rank*.pt"))
        tracker.load_portable([torch.load(path, weights_only=True) for path in paths])
    rows: list = []
    save_to = out_dir / f"{tag}-checkpoint" if resume_from is None else None
    observe_span(tracker, locals_, rank, world, begin, rows, save_to)
    stats, hist = tracker.per_tensor_stats(), tracker.k_histogram()
    if rank == 0:
        torch.save({"rows": rows, "stats": stats, "hist": hist}, out_dir / f"{tag}.pt")


def rank_main(rank, world, port, out_dir, jobs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for job in jobs:
            run_job(rank, world, Path(out_dir), *job)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world, out_dir: Path, jobs) -> dict[str, dict]:
    """Run ``jobs`` (tag, sample_per_tensor, checkpoint to resume from or None) on ``world``
    spawned gloo ranks; their rank-0 results by tag."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(rank_main, args=(world, free_port(), str(out_dir), jobs), nprocs=world, join=True)
    return {tag: torch.load(out_dir / f"{tag}.pt", weights_only=False) for tag, *_ in jobs}


def unsharded(sample, begin=0, end=STEPS):
    whole = {name: weight_path(name, 0).clone() for name in SHAPES}
    tracker = SignTracker(
        list(whole.items()), rho=RHO, eps=EPS, sample_per_tensor=sample, sample_seed=5
    )
    rows = []
    for t in range(1, end + 1):
        for name in SHAPES:
            whole[name].copy_(weight_path(name, t))
        tracker.observe()
        if t % LOG_EVERY == 0:
            rows.append(
                {"t": t, **tracker.window_stats(), "tensors": tracker.tensor_window_stats()}
            )
    return {"rows": rows, "stats": tracker.per_tensor_stats(), "hist": tracker.k_histogram()}


def assert_same(got, want):
    assert got["rows"] == want["rows"]
    pd.testing.assert_frame_equal(got["stats"], want["stats"])
    pd.testing.assert_frame_equal(got["hist"], want["hist"])


SAMPLES = {"full": None, "sampled": 9}


def test_shards_sum_to_the_unsharded_tracker_and_resume_under_other_world_sizes(tmp_path):
    """Worlds 2 and 3 (uneven shards, an empty one) against one process, full and sampled; the
    2-rank checkpoint taken halfway resumes on 3 ranks and on 1 to the same statistics."""
    fresh = [(mode, sample, None) for mode, sample in SAMPLES.items()]
    resumed = [(f"{mode}-resumed", s, f"{mode}-checkpoint") for mode, s in SAMPLES.items()]
    on_two = run_ranks(2, tmp_path, fresh)  # saves tmp_path/<mode>-checkpoint halfway
    on_three = run_ranks(3, tmp_path / "w3", fresh + resumed)
    on_one = run_ranks(1, tmp_path / "w1", resumed)
    for mode, sample in SAMPLES.items():
        want = unsharded(sample)
        assert want["hist"]["k"].max() > 0 and want["stats"]["zero_crossings"].iloc[-1] > 0
        want_tail = {**want, "rows": [r for r in want["rows"] if r["t"] > STEPS // 2]}
        assert_same(on_two[mode], want)
        assert_same(on_three[mode], want)
        assert_same(on_three[f"{mode}-resumed"], want_tail)
        assert_same(on_one[f"{mode}-resumed"], want_tail)
