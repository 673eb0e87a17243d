"""A trial sharded with FSDP2 over real gloo ranks against the one-process trial on the same
global batch; its checkpoint resumes under other world sizes."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from signlock.analysis.probe_run import checkpoint_weights
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.files import UnreadableFileError
from signlock.trainables.interventions import resolve_targets
from signlock.trainables.sharded import ShardedTrial, checkpoint_model_state, dim0_rows
from signlock.trainables.trainer import Trial

STEPS, HALF = 20, 10
LOSS_RTOL = 1e-4  # fp32 reduce-scatter sums gradients in another order than one backward pass


def config(**overrides) -> TrialConfig:
    """Gap init with the log-barrier, a learning rate and band that give sign flips within 20
    steps, the full tracker."""
    cfg = TrialConfig.from_dict(
        {
            "name": "sharded",
            "steps": STEPS,
            "log_every": 5,
            "eval_every": 10,
            "checkpoint_every": 5,
            "threads": 1,
            "model": {"d_model": 24, "n_layers": 2, "n_heads": 2, "d_ff": 40, "context_length": 16},
            "data": {
                "dataset": "synthetic",
                "batch_size": 6,
                "eval_batches": 1,
                "synthetic_sequences": 48,
                "synthetic_seq_len": 16,
            },
            "optim": {"lr": 2e-2},
            "init": {"a_init": 0.01},
            "regularizer": {"lam": 0.05},
            "tracker": {"rho": 1e-2, "eps": 1e-3},
        }
    )
    return cfg.with_overrides(overrides)


TEMPLATED_AND_SAMPLED = {  # the projection acts on one layer; its flips are the others'
    "tracker.sample_per_tensor": 50,
    "init.template_rank": 2,
    "regularizer.projection": True,
    "init.targets": ["blocks.0.mlp.fc1.weight"],
}


def initial_signs(trial: Trial) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in resolve_targets(trial.model, [], "targets"):
        whole = param.full_tensor() if hasattr(param, "full_tensor") else param
        out[name] = torch.signbit(whole.detach()).clone()
    return out


def rank_main(rank, world, port, run_dir, stop_at, sampled):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = config(**(TEMPLATED_AND_SAMPLED if sampled else {}))
        trial = ShardedTrial(cfg, run_dir, progress=False)
        signs = initial_signs(trial)
        trial.restore()
        if stop_at is None:
            trial.run()
        else:  # the first half of run(), then the process ends (a killed trial)
            trial.run_dir.mkdir(parents=True, exist_ok=True)
            while trial.step < stop_at:
                trial.train_step()
                if trial._should_log():
                    trial._log_row()
                    trial._maybe_checkpoint()
        final = {
            name: value.full_tensor() if hasattr(value, "full_tensor") else value
            for name, value in trial.model.state_dict().items()
        }
        if rank == 0:
            restored = trial.restored.step if trial.restored is not None else None
            saved = {"signs": signs, "restored": restored, "final": final}
            torch.save(saved, Path(run_dir) / "started.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sharded(world: int, run_dir: Path, stop_at: int | None = None, sampled=False) -> Path:
    args = (world, free_port(), str(run_dir), stop_at, sampled)
    mp.spawn(rank_main, args=args, nprocs=world, join=True)
    return run_dir


def outputs(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(run_dir / "metrics.parquet"), pd.read_parquet(run_dir / "flips.parquet")


def assert_same_run(got: Path, want: Path) -> None:
    got_metrics, got_flips = outputs(got)
    want_metrics, want_flips = outputs(want)
    pd.testing.assert_frame_equal(got_flips, want_flips)
    assert got_metrics["step"].tolist() == want_metrics["step"].tolist()
    for column in ("train_loss", "val_loss", "flip_vs_init", "projection_changes"):
        pd.testing.assert_series_equal(
            got_metrics[column], want_metrics[column], rtol=LOSS_RTOL, check_exact=False
        )


def test_two_workers_match_one_process_then_resume_on_three_and_on_one(tmp_path):
    single = tmp_path / "single"
    trial = Trial(config(), single, progress=False)
    want_signs = initial_signs(trial)
    trial.run()
    assert pd.read_parquet(single / "flips.parquet")["k"].max() > 0  # the horizon has flips

    two = run_sharded(2, tmp_path / "two")
    started = torch.load(two / "started.pt", weights_only=True)
    assert started["signs"].keys() == want_signs.keys()
    assert all(torch.equal(started["signs"][n], want_signs[n]) for n in want_signs)
    assert started["restored"] is None
    assert_same_run(two, single)
    assert_consolidated_weights_match(two, started["final"])

    killed = run_sharded(2, tmp_path / "killed", stop_at=HALF)  # the first half, then it ends
    assert len(list((killed / "checkpoints").glob("state-*"))) == 2  # steps 5 and 10
    for world in (3, 1):
        resumed = tmp_path / f"resumed-on-{world}"
        shutil.copytree(killed, resumed)
        run_sharded(world, resumed)
        assert torch.load(resumed / "started.pt", weights_only=True)["restored"] == HALF
        assert_same_run(resumed, single)
        assert len(list((resumed / "checkpoints").glob("state-*"))) == 2  # latest and previous


def assert_consolidated_weights_match(run_dir: Path, want: dict[str, torch.Tensor]) -> None:
    """``probe``/``compress`` read a sharded checkpoint whole, in one process: the weights the
    workers ended with, exactly."""
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    weights = checkpoint_model_state(checkpoint)
    assert weights.keys() == want.keys()
    assert all(torch.equal(weights[name], value) for name, value in want.items())
    probed = dict(checkpoint_weights(checkpoint))
    assert probed.keys() == want.keys()


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_in_dcp_metadata_is_refused_not_run(tmp_path):
    state_dir = tmp_path / "checkpoints" / "state-000000005-abc"
    state_dir.mkdir(parents=True)
    (state_dir / ".metadata").write_bytes(pickle.dumps(RunsCode()))
    checkpoint = tmp_path / "checkpoints" / "latest.pt"
    torch.save({"config": {}, "step": 5, "state_dir": state_dir.name}, checkpoint)
    with pytest.raises(UnreadableFileError, match=r"refusing posix.system|refusing os.system"):
        checkpoint_model_state(checkpoint)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_sampled_tracking_and_projection_on_two_workers_match_one_process(tmp_path):
    single = tmp_path / "single"
    Trial(config(**TEMPLATED_AND_SAMPLED), single, progress=False).run()
    assert pd.read_parquet(single / "metrics.parquet")["projection_changes"].sum() > 0
    assert_same_run(run_sharded(2, tmp_path / "two", sampled=True), single)


def test_fsdp_splits_rows_like_torch_chunk():
    for rows in range(1, 12):
        for world in (1, 2, 3, 4, 5):
            want = [c.shape[0] for c in torch.arange(rows).chunk(world)]
            assert dim0_rows(rows, world) == want + [0] * (world - len(want))


def refuse_odd_batch(rank, world, port, run_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ShardedTrial(config(**{"data.batch_size": 7}), run_dir, progress=False)
    except ConfigError as error:
        assert "data.batch_size" in str(error) and "7" in str(error)
    else:
        raise AssertionError("batch 7 over 2 workers was accepted")
    finally:
        dist.destroy_process_group()


def test_a_batch_that_does_not_split_over_the_workers_is_refused(tmp_path):
    mp.spawn(refuse_odd_batch, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
