"""The flat layout (FlatSignTracker) vs the lean one (SignTracker) on the same weights, interleaved.

TinyCharLM (C.4.1) trains with AdamW on random tokens; after every optimizer step both trackers
observe the same weights, in alternating order, so machine noise hits both alike. Prints the
median ``observe()`` time of each, their ratio, and the resident bytes per tracked scalar: the
flat layout's per-scalar buffers, and the lean layout's state/k bytes plus its host tables
(τ1 entries, K overflow) as they stand after the run. Both must agree on every statistic.

    python bench/tracker_layouts.py [--steps 300] [--threads 2] [--d-model 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from signlock.trainables.config import ModelConfig
from signlock.trainables.flat_tracker import FlatSignTracker
from signlock.trainables.models import build_model, matrix_parameters
from signlock.trainables.tracker import SignTracker

VOCAB = 65


def resident_bytes(tracker: SignTracker | FlatSignTracker) -> int:
    """The tracker's own tensors, one entry per storage."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tracker.resident_tensors()}  # fmt: skip
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--d-model", type=int, default=128, help="TinyCharLM width (d_ff 2×)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    width = {"d_model": args.d_model, "d_ff": 2 * args.d_model}
    model = build_model(ModelConfig(**width), vocab_size=VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    trackers = {
        "flat": FlatSignTracker(matrix_parameters(model)),
        "lean": SignTracker(matrix_parameters(model)),
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
    host = lean.host_table_bytes()
    flat_median, lean_median = (statistics.median(times[name]) for name in ("flat", "lean"))
    print(
        f"tracked scalars            : {n} in {len(lean.tensor_names)} tensors, {args.steps} steps"
    )
    print(f"flat observe() (median)    : {flat_median * 1e6:.0f} µs")
    print(f"lean observe() (median)    : {lean_median * 1e6:.0f} µs")
    print(f"ratio lean/flat            : {lean_median / flat_median:.3f}")
    print(f"flat resident bytes/scalar : {resident_bytes(flat) / n:.2f}")
    dense = sum(group.state.nbytes + group.k.nbytes for group in lean._groups)
    print(f"lean resident bytes/scalar : {dense / n:.2f} state+K, {resident_bytes(lean) / n:.2f} "
          f"with scratch, + {host / n:.3f} host tables")  # fmt: skip
    print(f"h_direct after the run     : {lean.summary()['h_direct']:.4f}")
    print(f"lean dense pass            : {sorted({g.backend for g in lean._groups})}")


if __name__ == "__main__":
    main()
