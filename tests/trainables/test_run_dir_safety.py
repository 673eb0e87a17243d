"""A run directory under faults: a corrupt newest checkpoint, a full disk, a planted pickle,
names that would escape it, and files that are never half-written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from signlock.search_spaces.presets import trial_preset
from signlock.trainables.files import UnreadableFileError, atomic_path, write_parquet
from signlock.trainables.trainer import Trial, checkpoint_step, run_trial
from tests.conftest import fill_disk

SIGNLOCK = [sys.executable, "-m", "signlock.orchestrator.cli"]
TINY = {
    "steps": 60, "log_every": 10, "eval_every": 20, "checkpoint_every": 20,
    "model.d_model": 32, "model.d_ff": 64, "model.n_heads": 2,
    "data.eval_batches": 2, "data.synthetic_sequences": 128, "data.batch_size": 8,
}  # fmt: skip


class Crash(Exception):
    pass


def tiny_config():
    return trial_preset("synthetic-smoke").with_overrides(TINY)


def crash_at(step: int):
    def reporter(row, saved):
        if int(row["step"]) == step:
            raise Crash

    return reporter


def signlock(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*SIGNLOCK, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_truncated_newest_checkpoint_resumes_from_the_previous_one_to_the_same_result(
    tmp_path,
):
    cfg = tiny_config()
    run_trial(cfg, tmp_path / "straight", progress=False)
    with pytest.raises(Crash):
        run_trial(cfg, tmp_path / "resumed", progress=False, reporter=crash_at(50))
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert json.loads((checkpoints / "previous.json").read_text())["step"] == 20
    latest = checkpoints / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])

    trial = Trial(cfg, tmp_path / "resumed", progress=False)
    restored = trial.restore()
    assert restored is not None and restored.step == 20 and restored.path.name == "previous.pt"
    assert "latest.pt" in restored.skipped[0] and "truncated" in restored.skipped[0]
    trial.run()
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "resumed" / "flips.parquet"),
        pd.read_parquet(tmp_path / "straight" / "flips.parquet"),
    )


def test_a_garbled_step_sidecar_falls_back_to_the_previous_checkpoints_step(tmp_path):
    cfg = tiny_config()
    with pytest.raises(Crash):
        run_trial(cfg, tmp_path, progress=False, reporter=crash_at(50))
    (tmp_path / "checkpoints" / "latest.json").write_text('{"step": 4')
    assert checkpoint_step(tmp_path / "checkpoints" / "latest.pt") == 20


def test_train_with_no_readable_checkpoint_says_which_file_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    first = signlock("train", "--preset", "synthetic-smoke", "--steps", "20", "--quiet",
                     "--run-dir", str(run_dir), cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"garbage, not a zip")
    again = signlock("train", "--preset", "synthetic-smoke", "--steps", "20", "--quiet",
                     "--run-dir", str(run_dir), cwd=tmp_path)  # fmt: skip
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"signlock: error: unreadable file {run_dir / 'checkpoints' / 'latest.pt'}: truncated or "
        "not a torch checkpoint (not a zip archive of tensors); no earlier readable checkpoint "
        "(--no-resume starts over)"
    ]


class Plant:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_as_a_checkpoint_is_refused_and_never_run(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "code-ran"
    import torch

    torch.save({"step": 0, "payload": Plant(marker)}, run_dir / "checkpoints" / "latest.pt")
    (run_dir / "checkpoints" / "latest.json").write_text('{"step": 0}')
    result = signlock("train", "--preset", "synthetic-smoke", "--steps", "20", "--quiet",
                      "--run-dir", str(run_dir), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and not marker.exists()
    assert len(result.stderr.strip().splitlines()) == 1
    assert "signlock never unpickles" in result.stderr and "weights_only=False" not in result.stderr
    assert pickle.dumps(Plant(marker))  # the payload itself is a working pickle


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "name=../../x"], "invalid name='../../x': one path component"),
        (["--set", "data.path=/nonexistent"], "not found: /nonexistent"),
        (["--run-dir", "a-file"], "invalid --run-dir='a-file': a directory (this is a file)"),
    ],
)
def test_train_refuses_paths_that_escape_or_do_not_exist_in_one_line(tmp_path, args, expected):
    (tmp_path / "a-file").write_text("not a directory")
    preset = "charlm-smoke" if "data.path" in args[1] else "synthetic-smoke"
    result = signlock("train", "--preset", preset, "--steps", "10", "--quiet", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().startswith(f"signlock: error: {expected}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path.parent / "x").exists()
    assert not (tmp_path / "signlock-runs").exists()


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays_intact(tmp_path, small_tmpfs):
    run_dir = small_tmpfs / "run"
    every_10 = ["--set", "checkpoint_every=10", "--set", "log_every=10", "--set", "eval_every=10"]
    first = signlock("train", "--preset", "synthetic-smoke", "--steps", "20", "--quiet",
                     *every_10, "--run-dir", str(run_dir), cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    before = (run_dir / "checkpoints" / "latest.pt").read_bytes()
    metrics_before = (run_dir / "metrics.parquet").read_bytes()
    fill_disk(small_tmpfs)
    again = signlock("train", "--preset", "synthetic-smoke", "--steps", "20", "--quiet",
                     "--no-resume", *every_10, "--run-dir", str(run_dir), cwd=tmp_path)  # fmt: skip
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert lines[-1].startswith("signlock: error: no space left on device writing "), lines
    assert str(run_dir) in lines[-1] and "Traceback" not in again.stderr
    assert (run_dir / "checkpoints" / "latest.pt").read_bytes() == before
    assert (run_dir / "metrics.parquet").read_bytes() == metrics_before
    assert not [p.name for p in run_dir.rglob("*.tmp")]


def test_files_are_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "table.parquet"
    write_parquet(pd.DataFrame({"a": [1, 2]}), target)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a parquet file")
        raise Boom
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second  # two writers never share a temporary file
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"


def test_load_refuses_a_file_that_is_not_a_trial_checkpoint(tmp_path):
    import torch

    cfg = tiny_config()
    trial = Trial(cfg, tmp_path, progress=False)
    torch.save({"just": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UnreadableFileError, match="not a signlock trial checkpoint"):
        trial.load_checkpoint(tmp_path / "other.pt")
