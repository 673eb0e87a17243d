"""Time and peak memory of probing one matrix: the 12.9B model's width (4096 × 4096) and a
1536 × 384 one. Each statistic of `signlock probe` is timed on its own (E_r of S and A, the KS
blocks, the patch entropy, the codec table), then the whole probe of that one matrix; peak
memory is the process's peak RSS growth (Linux ``ru_maxrss``) measured in a fresh subprocess
per size, so one size's allocations do not hide the other's.

    python bench/probe_throughput.py [--sizes 4096x4096,1536x384] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def measure(rows: int, cols: int, threads: int) -> dict[str, float]:
    from signlock.analysis import probes

    torch.set_num_threads(threads)
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)) * 0.02
    signs = probes.sign_matrix(weight)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timings = {}
    steps = {
        "E_r(S)": lambda: probes.svd_errors(signs.float()),
        "E_r(A)": lambda: probes.svd_errors(weight.abs()),
        "KS": lambda: probes.ks_test([("w", signs)]),
        "entropy": lambda: probes.patch_entropy(signs),
        "codecs": lambda: probes.codec_rows("w", signs),
    }
    for name, step in steps.items():
        started = time.perf_counter()
        step()
        timings[name] = time.perf_counter() - started
    timings["total"] = sum(timings.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timings["peak_rss_growth_mib"] = (peak - before) / 1024
    timings["matrix_mib"] = weight.nbytes / 2**20
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096x4096,1536x384")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child's single size
    args = parser.parse_args()
    if args.one:
        rows, cols = map(int, args.one.split("x"))
        print(json.dumps(measure(rows, cols, args.threads)))
        return
    print(f"{'matrix':<12}" + "".join(f"{k:>10}" for k in ("E_r(S)", "E_r(A)", "KS", "entropy",
          "codecs", "total")) + f"{'peak MiB':>10}")  # fmt: skip
    for size in args.sizes.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--one", size, "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(child.stdout.strip().splitlines()[-1])
        cells = "".join(
            f"{result[k]:>9.2f}s" for k in ("E_r(S)", "E_r(A)", "KS", "entropy", "codecs", "total")
        )
        print(f"{size:<12}{cells}{result['peak_rss_growth_mib']:>10.0f}")


if __name__ == "__main__":
    main()
