"""Ray-on-SLURM against local Ray, in one run: start-up and per-trial overhead of the same sweep.

The sweep of ``bench/orchestration_overhead.py`` (16 short trials, concurrency 2) runs twice:
``signlock sweep`` on this process's own Ray, then ``--backend slurm`` on the local single-node
SLURM (``cluster/local_slurm.sh up`` first), one job with 2 CPUs holding a Ray cluster. For each:

- start-up: launch (local) or submission (SLURM) → first trial running (for SLURM this includes
  sbatch, the job starting, the Ray head starting and the Tune driver connecting);
- sweep wall: launch or submission → trials table written;
- ideal = Σ trial wall time / concurrency, per-trial overhead = (wall − start-up − ideal) / trials.

    cluster/local_slurm.sh up && python bench/slurm_overhead.py [--trials 16] [--steps 400]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
from orchestration_overhead import bench_spec, prepare_store  # beside this script

from signlock.cluster.slurm_request import SlurmRequest
from signlock.orchestrator.submit import submit_sweep, wait_for_job
from signlock.orchestrator.sweep import SweepOptions, launch_sweep
from signlock.orchestrator.tracking import default_tracking_uri


def trial_times(sweep_dir: Path) -> pd.DataFrame:
    dataset = pads.dataset(sweep_dir / "summaries", partitioning="hive")
    return dataset.to_table(columns=["attempt_started_at", "finished_at"]).to_pandas()


def report(label: str, started_at: float, ended_at: float, sweep_dir: Path, n: int, c: int) -> None:
    times = trial_times(sweep_dir)
    walls = times["finished_at"] - times["attempt_started_at"]
    startup = times["attempt_started_at"].min() - started_at
    wall = ended_at - started_at
    ideal = walls.sum() / c
    print(f"{label}: trials {len(times)}/{n}, trial wall median {walls.median():.2f} s")
    print(f"  start-up (→ first trial running) : {startup:.1f} s")
    print(f"  sweep wall                       : {wall:.1f} s (ideal {ideal:.1f} s)")
    print(f"  ratio wall / ideal               : {wall / ideal:.3f}")
    print(f"  per-trial overhead beyond start-up: {(wall - startup - ideal) / n:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="a multiple of 4")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--partition", default="debug")
    args = parser.parse_args()
    concurrency = 2
    spec = bench_spec(args.trials, args.steps)
    with tempfile.TemporaryDirectory(prefix="signlock-bench-", dir=Path.cwd()) as tmp:
        root = Path(tmp)  # under the working directory: a filesystem the job sees too
        options = SweepOptions(
            storage=root / "sweeps",
            tracking_uri=default_tracking_uri(root),
            max_concurrent=concurrency,
            progress=False,
        )
        prepare_store(options)

        started = time.time()
        launch_sweep(spec, options, name="local")
        report("local Ray", started, time.time(), root / "sweeps" / "local", args.trials, 2)

        request = SlurmRequest(args.partition, "01:00:00", cpus_per_node=concurrency)
        started = time.time()
        sweep_dir, job = submit_sweep(spec, options, request, name="slurm")
        wait_for_job(sweep_dir, poll_s=0.5)
        ended = (sweep_dir / "trials.csv").stat().st_mtime
        print(f"SLURM job {job}", file=sys.stderr)
        report("Ray on SLURM", started, ended, sweep_dir, args.trials, concurrency)


if __name__ == "__main__":
    main()
