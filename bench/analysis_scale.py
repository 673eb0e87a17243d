"""`signlock analyze` on a sweep of the size the paper's grids reach: wall time and peak RSS.

Builds a synthetic sweep directory — ``--trials`` finished trials (default 1,000), each with
``--tensors`` tracked tensors (100) logged at ``--steps`` steps (1,000), so ``tensor_metrics``
holds trials × tensors × steps rows (10⁸ by default), plus K histograms, summaries, the sweep
record and an MLflow parent run — then runs ``signlock analyze`` on it in a subprocess and
reports its wall time and peak resident memory. Target on two cores: < 60 s and < 2 GiB.

    python bench/analysis_scale.py [--trials 1000] [--tensors 100] [--steps 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from signlock.orchestrator import tracking
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.records import SweepContext, SweepRecord, write_partition

SEEDS = 4
PER_BLOCK = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")


def tensor_names(count: int) -> list[str]:
    names = ["tok_emb.weight", "pos_emb.weight", "lm_head.weight"]
    block = 0
    while len(names) < count:
        names += [f"blocks.{block}.{part}.weight" for part in PER_BLOCK]
        block += 1
    return names[:count]


def make_spec(trials: int) -> SweepSpec:
    a_inits = [round(1e-4 * (i + 1), 7) for i in range(trials // SEEDS)]  # within the C.4 bound
    return SweepSpec.from_dict(
        {
            "name": "scale-bench",
            "base": "synthetic-smoke",
            "axes": {"init.a_init": {"grid": a_inits}},
            "seeds": list(range(SEEDS)),
        }
    )


def tensor_metrics(names: list[str], steps: int, rng: np.random.Generator) -> pd.DataFrame:
    n_tensors = len(names)
    step = np.repeat(np.arange(1, steps + 1, dtype=np.int64) * 10, n_tensors)
    tensor = pd.Categorical.from_codes(np.tile(np.arange(n_tensors), steps), names)
    flip = np.minimum(np.cumsum(rng.random((steps, n_tensors)) * 1e-4, axis=0), 0.5).ravel()
    return pd.DataFrame(
        {
            "step": step,
            "tensor": tensor,
            "n_tracked": np.full(step.size, 2048, dtype=np.int64),
            "flip_vs_init": flip,
            "step_flip_rate": rng.random(step.size) * 1e-4,
            "boundary_hit_fraction": flip / 2,
            "k_mean": flip * 3,
        }
    )


def flips(names: list[str], rng: np.random.Generator) -> pd.DataFrame:
    frames = []
    for name in [*names, "__pooled__"]:
        h, g = rng.uniform(0.01, 0.3), rng.uniform(0.0, 0.7)
        k = np.arange(10)
        expected = 2048 * np.where(k == 0, 1 - h, h * (1 - g) * g ** np.maximum(k - 1, 0))
        frames.append(pd.DataFrame({"tensor": name, "k": k, "count": expected.astype(np.int64)}))
    return pd.concat(frames, ignore_index=True)


def build(root: Path, trials: int, n_tensors: int, steps: int) -> Path:
    spec = make_spec(trials)
    uri = tracking.default_tracking_uri(root)
    client = tracking.MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(client, "signlock", (root / "art").as_uri())
    parent = tracking.create_sweep_run(client, experiment, spec.name, {"sweep.name": spec.name}, {})
    sweep_dir = root / "sweeps" / spec.name
    sweep_dir.mkdir(parents=True)
    context = SweepContext(spec.name, str(sweep_dir), spec.to_dict(), uri, experiment, parent)
    SweepRecord(context, {"cpu": 1.0, "gpu": 0.0}, trials, 2, 2, None).write(sweep_dir)
    names = tensor_names(n_tensors)
    rng = np.random.default_rng(0)
    for point in spec.grid_overrides():
        cfg = spec.trial_config(point)
        write_partition(sweep_dir, "tensor_metrics", cfg.name, tensor_metrics(names, steps, rng))
        write_partition(sweep_dir, "flips", cfg.name, flips(names, rng))
        summary = {
            **tracking.flatten_params(cfg.to_dict()),
            "steps": steps * 10,
            "val_ppl": float(rng.uniform(3, 5)),
            "flip_mean": float(rng.uniform(1e-5, 1e-3)),
            "final_flip_ratio": float(rng.uniform(0.01, 0.2)),
            "h_hat": 0.1,
            "g_hat": 0.3,
        }
        write_partition(sweep_dir, "summaries", cfg.name, pd.DataFrame([summary]))
    return sweep_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="a multiple of 4")
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--keep", help="build the sweep here and keep it")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="analysis-scale-"))
    try:
        started = time.perf_counter()
        sweep_dir = build(root, args.trials, args.tensors, args.steps)
        built = time.perf_counter() - started
        rows = args.trials * args.tensors * args.steps
        size = sum(p.stat().st_size for p in (sweep_dir / "tensor_metrics").rglob("*.parquet"))
        print(f"built {args.trials} trials, {rows:.3g} tensor_metrics rows "
              f"({size / 2**30:.2f} GiB of Parquet) in {built:.0f} s")  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "signlock.orchestrator.cli", "analyze", str(sweep_dir)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if result.returncode != 0:
            sys.exit(result.stderr[-3000:])
        print(f"signlock analyze: {wall:.1f} s wall, peak RSS {peak_kib / 2**20:.2f} GiB "
              f"(target < 60 s, < 2 GiB)")  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
