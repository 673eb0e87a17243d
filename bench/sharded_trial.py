"""Step time of one trial sharded over N local workers (FSDP2, gloo on CPU) against the same trial
in one process, on the same global batch, measured in one run and interleaved.

    python bench/sharded_trial.py [--workers 2] [--steps 40] [--repeats 2]

The figure is a sanity ratio on CPU (2 cores here: N workers share them, and every step adds
FSDP's all-gathers and reduce-scatters over gloo), not a speed-up claim. Each trial's
``train_seconds`` (``summary.json``'s ``wall_time_s``) counts only training steps, so process
start and model building are left out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from signlock.trainables.config import TrialConfig
from signlock.trainables.launch import run_on_local_workers
from signlock.trainables.trainer import run_trial


def bench_config(steps: int) -> TrialConfig:
    """A small GPT (2 blocks, d 128) with the gap init, the barrier and the full tracker."""
    return TrialConfig.from_dict(
        {
            "name": "bench-sharded",
            "steps": steps,
            "log_every": steps,
            "eval_every": steps,
            "threads": 1,
            "model": {
                "d_model": 128,
                "n_layers": 2,
                "n_heads": 4,
                "d_ff": 512,
                "context_length": 64,
            },
            "data": {
                "dataset": "synthetic",
                "batch_size": 16,
                "eval_batches": 1,
                "synthetic_sequences": 256,
                "synthetic_seq_len": 64,
            },
            "init": {"a_init": 0.01},
            "regularizer": {"lam": 0.05},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = bench_config(args.steps)
    one, sharded = [], []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            single = run_trial(cfg, Path(root, f"one-{repeat}"), resume=False, progress=False)
            one.append(single["wall_time_s"] / args.steps)
            many = run_on_local_workers(
                cfg, Path(root, f"sharded-{repeat}"), args.workers, resume=False, progress=False
            )
            sharded.append(many["wall_time_s"] / args.steps)
            print(
                f"repeat {repeat}: 1 process {one[-1] * 1e3:.1f} ms/step, "
                f"{args.workers} workers {sharded[-1] * 1e3:.1f} ms/step "
                f"(ratio {sharded[-1] / one[-1]:.2f})"
            )
    ratio = statistics.median(s / o for s, o in zip(sharded, one, strict=True))
    print(
        f"median ratio, {args.workers} FSDP workers / 1 process, same global batch: {ratio:.2f} "
        f"({cfg.data.batch_size} sequences of {cfg.data.synthetic_seq_len}, {args.steps} steps)"
    )


if __name__ == "__main__":
    main()
