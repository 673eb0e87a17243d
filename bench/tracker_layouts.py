"""Flat-layout SignTracker vs LeanSignTracker on the same weight sequence, interleaved.

TinyCharLM (C.4.1) trains with AdamW on random tokens; after every optimizer step both trackers
observe the same weights, in alternating order, so machine noise hits both alike. Prints the
median ``observe()`` time of each, their ratio, and the resident bytes per tracked scalar: the
flat layout's per-scalar buffers, and the lean layout's state/k bytes plus its host tables
(τ1 entries, K overflow) as they stand after the run. Both must agree on every statistic.

    python bench/tracker_layouts.py [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from signlock.trainables._lean_kernel import K_OVERFLOW_ENTRY_BYTES, TAU1_ENTRY_BYTES
from signlock.trainables.config import ModelConfig
from signlock.trainables.lean_tracker import LeanSignTracker
from signlock.trainables.models import build_model, matrix_parameters
from signlock.trainables.tracker import SignTracker

VOCAB = 65


def flat_bytes(tracker: SignTracker) -> int:
    buffers = ("cur", "prev", "work", "bits", "direction", "neg_bound", "init_neg", "code", "k",
               "tau1", "crossings", "band_skips", "mask")  # fmt: skip
    return sum(
        getattr(group, name).nbytes
        for group in tracker._groups
        for name in buffers
        if hasattr(group, name)
    )


def lean_bytes(tracker: LeanSignTracker) -> tuple[int, int]:
    dense = sum(group.state.nbytes + group.k.nbytes for group in tracker._lean_groups)
    host = sum(
        group.tau1.all_positions().size * TAU1_ENTRY_BYTES
        + len(group.k_overflow) * K_OVERFLOW_ENTRY_BYTES
        for group in tracker._lean_groups
    )
    return dense, host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), vocab_size=VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    trackers = {
        "flat": SignTracker(matrix_parameters(model)),
        "lean": LeanSignTracker(matrix_parameters(model)),
    }
    times: dict[str, list[float]] = {name: [] for name in trackers}
    generator = torch.Generator().manual_seed(0)
    for step in tqdm(range(args.steps), desc="steps", leave=False):
        tokens = torch.randint(0, VOCAB, (32, 65), generator=generator)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        order = list(trackers) if step % 2 else list(reversed(trackers))
        for name in order:
            started = time.perf_counter()
            trackers[name].observe()
            times[name].append(time.perf_counter() - started)
    flat, lean = trackers["flat"], trackers["lean"]
    pd.testing.assert_frame_equal(flat.per_tensor_stats(), lean.per_tensor_stats())
    assert torch.equal(flat.k_values().long(), lean.k_values())
    n = lean.n_tracked
    dense, host = lean_bytes(lean)
    flat_median, lean_median = (statistics.median(times[name]) for name in ("flat", "lean"))
    print(
        f"tracked scalars            : {n} in {len(lean.tensor_names)} tensors, {args.steps} steps"
    )
    print(f"flat observe() (median)    : {flat_median * 1e6:.0f} µs")
    print(f"lean observe() (median)    : {lean_median * 1e6:.0f} µs")
    print(f"ratio lean/flat            : {lean_median / flat_median:.3f}")
    print(f"flat resident bytes/scalar : {flat_bytes(flat) / n:.2f}")
    print(f"lean resident bytes/scalar : {dense / n:.2f} dense + {host / n:.3f} host tables")
    print(f"h_direct after the run     : {lean.summary()['h_direct']:.4f}")


if __name__ == "__main__":
    main()
