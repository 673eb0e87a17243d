"""Sweep wall time vs the ideal for 16 short trials on local Ray, with MLflow logging.

ideal = (sum of trial wall times, each measured inside its worker from start to finish, MLflow
and Parquet writes included) / concurrency. The ratio sweep wall / ideal is the orchestration
overhead: scheduling, actor start-up, result processing and Tune's own bookkeeping. Ray's
start-up (``ray.init``) and creating a new MLflow store are one-time costs of a machine; they
are reported separately and not counted in the sweep wall.

    python bench/orchestration_overhead.py [--trials 16] [--concurrency 2] [--steps 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads

from signlock.orchestrator.sweep import SweepOptions, launch_sweep
from signlock.orchestrator.tracking import (
    MlflowClient,
    default_artifact_root,
    default_tracking_uri,
    get_or_create_experiment,
)
from signlock.search_spaces.spec import SweepSpec


def bench_spec(trials: int, steps: int) -> SweepSpec:
    seeds = 4
    a_inits = [0.002 * (i + 1) for i in range(trials // seeds)]
    return SweepSpec.from_dict(
        {
            "name": "overhead",
            "base": "synthetic-smoke",
            "set": {
                "steps": steps,
                "log_every": 10,
                "eval_every": steps,
                "checkpoint_every": steps // 2,
                "model.d_model": 32,
                "model.d_ff": 64,
                "model.n_heads": 2,
                "data.batch_size": 16,
                "data.eval_batches": 2,
                "data.synthetic_sequences": 256,
                "threads": 1,
            },
            "axes": {"init.a_init": {"grid": a_inits}},
            "seeds": list(range(seeds)),
            "resources": {"cpus_per_trial": 1},
        }
    )


def prepare_store(options: SweepOptions) -> None:
    """Create the MLflow store and experiment (a one-time cost of a machine, not of a sweep)."""
    client = MlflowClient(options.tracking_uri)
    artifact_root = default_artifact_root(options.tracking_uri, options.storage)
    get_or_create_experiment(client, options.experiment, artifact_root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="a multiple of 4")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400, help="steps per trial (~10 s each)")
    args = parser.parse_args()

    import ray

    spec = bench_spec(args.trials, args.steps)
    with tempfile.TemporaryDirectory(prefix="signlock-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - started
        options = SweepOptions(
            storage=root / "sweeps",
            tracking_uri=default_tracking_uri(root),
            max_concurrent=args.concurrency,
            progress=False,
        )
        started = time.perf_counter()
        prepare_store(options)
        store_s = time.perf_counter() - started
        launched_at = time.time()
        started = time.perf_counter()
        table = launch_sweep(spec, options)
        sweep_wall = time.perf_counter() - started
        done_at = time.time()
        summaries = pads.dataset(root / "sweeps" / "overhead" / "summaries", partitioning="hive")
        rows = summaries.to_table(columns=["attempt_started_at", "finished_at", "wall_time_s"])
        frame = rows.to_pandas()
        ray.shutdown()

    trial_times = frame["finished_at"] - frame["attempt_started_at"]
    head = frame["attempt_started_at"].min() - launched_at
    tail = done_at - frame["finished_at"].max()
    ideal = trial_times.sum() / args.concurrency
    print(f"trials finished            : {(table['status'] == 'TERMINATED').sum()} / {len(table)}")
    print(f"ray.init                   : {ray_init_s:.1f} s (not counted)")
    print(f"new MLflow sqlite store    : {store_s:.1f} s (not counted)")
    print(f"trial wall (median / sum)  : {trial_times.median():.2f} s / {trial_times.sum():.1f} s")
    print(f"  of which training steps  : {frame['wall_time_s'].sum():.1f} s")
    print(f"ideal = sum / concurrency  : {ideal:.1f} s (concurrency {args.concurrency})")
    print(f"sweep wall (launch → table): {sweep_wall:.1f} s")
    print(f"  launch → first trial     : {head:.1f} s")
    print(f"  last trial → table       : {tail:.1f} s")
    print(f"ratio sweep wall / ideal   : {sweep_wall / ideal:.3f}")


if __name__ == "__main__":
    main()
