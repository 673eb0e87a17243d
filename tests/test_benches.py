"""The GPU benchmark keeps running: its whole path on CPU with the tiny scale-debug model (on a
GPU it also measures memory; `bench/gpu_checks.sh` runs it there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_scale_gpu_bench_runs_on_cpu(tmp_path, tinyshakespeare_path):
    out = tmp_path / "scale_gpu.json"
    bench = [sys.executable, str(REPO_ROOT / "bench" / "scale_gpu.py")]
    flags = ["--data", str(tinyshakespeare_path), "--device", "cpu", "--models", "scale-debug"]
    done = subprocess.run(
        [*bench, *flags, "--steps", "2", "--warmup", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("scale-debug")]
    assert rows and "AdamW" in rows[0]  # the printed table has the model's row
    (result,) = json.loads(out.read_text())["results"]
    assert result["error"] is None
    assert set(result["step_ms"]) == {"none", "sampled", "full", "full-flat"}
    assert result["tracked_scalars"]["full"] > result["tracked_scalars"]["sampled"] > 0
