"""The one-trial loop: outputs, resume equivalence, divergence, every model family."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from signlock.search_spaces.presets import trial_preset
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import TrainingDivergedError
from signlock.trainables.schema import METRIC_COLUMNS, SUMMARY_FIELDS, TENSOR_METRIC_COLUMNS
from signlock.trainables.trainer import Trial, load_run_config, run_trial

TIMING_KEYS = {"wall_time_s", "steps_per_s"}


def tiny_lockin_config(**overrides) -> TrialConfig:
    """A seconds-long trial that exercises every intervention and the tracker."""
    cfg = TrialConfig.from_dict(
        {
            "name": "tiny",
            "steps": 40,
            "log_every": 5,
            "eval_every": 10,
            "checkpoint_every": 10,
            "threads": 1,
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "context_length": 32},
            "data": {
                "dataset": "synthetic",
                "batch_size": 8,
                "eval_batches": 2,
                "synthetic_sequences": 64,
                "synthetic_seq_len": 32,
            },
            "optim": {"lr": 3e-3},
            "schedule": {"kind": "cosine", "warmup_steps": 5},
            "init": {"a_init": 0.01, "template_rank": 2},
            "regularizer": {"lam": 0.05, "projection": False},
            "tracker": {"rho": 1e-3, "eps": 1e-4},
        }
    )
    return cfg.with_overrides(overrides)


def read_outputs(run_dir):
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    flips = pd.read_parquet(run_dir / "flips.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    return metrics, flips, summary


def test_run_dir_has_every_output_with_its_schema(tmp_path):
    cfg = tiny_lockin_config()
    summary = run_trial(cfg, tmp_path / "run", progress=False)
    run_dir = tmp_path / "run"
    assert load_run_config(run_dir) == cfg
    metrics, flips, written = read_outputs(run_dir)
    assert written == json.loads(json.dumps(summary))
    assert list(metrics.columns) == list(METRIC_COLUMNS)
    assert metrics["step"].tolist() == list(range(5, 41, 5))
    assert metrics["val_loss"].notna().tolist() == [s % 10 == 0 for s in range(5, 41, 5)]
    assert (metrics["lam"].iloc[:3] == 0.05).all() and metrics["lam"].iloc[-1] < 0.05
    schema = pq.read_schema(run_dir / "flips.parquet")
    assert schema.names == ["tensor", "k", "count"]
    assert pa.types.is_string(schema.field("tensor").type) or pa.types.is_large_string(
        schema.field("tensor").type
    )
    assert schema.field("k").type == pa.int64() and schema.field("count").type == pa.int64()
    pooled = flips[flips.tensor == "__pooled__"]
    per_tensor = flips[flips.tensor != "__pooled__"]
    assert pooled["count"].sum() == per_tensor["count"].sum() == summary["n_tracked"]
    for key in (
        "val_loss",
        "val_ppl",
        "flip_mean",
        "final_flip_ratio",
        "h_hat",
        "g_hat",
        "wall_time_s",
        "steps_per_s",
    ):
        assert math.isfinite(summary[key]), key
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    assert (run_dir / "tensor_stats.parquet").is_file()
    assert (run_dir / "checkpoints" / "latest.pt").is_file()
    tensor_metrics = pd.read_parquet(run_dir / "tensor_metrics.parquet")
    assert list(tensor_metrics.columns) == list(TENSOR_METRIC_COLUMNS)
    tensors = per_tensor["tensor"].unique()
    assert len(tensor_metrics) == len(metrics) * len(tensors)  # one row per tensor and log row
    last = tensor_metrics[tensor_metrics["step"] == 40]
    pooled_flip = (last["flip_vs_init"] * last["n_tracked"]).sum() / last["n_tracked"].sum()
    assert pooled_flip == pytest.approx(metrics["flip_vs_init"].iloc[-1])
    assert last["n_tracked"].sum() == summary["n_tracked"]


def test_training_learns_the_synthetic_task(tmp_path):
    cfg = tiny_lockin_config(
        **{
            "steps": 60,
            "init.a_init": None,
            "init.template_rank": None,
            "regularizer.lam": 0.0,
            "eval_every": 60,
            "checkpoint_every": None,
        }
    )
    summary = run_trial(cfg, tmp_path / "run", progress=False)
    assert summary["val_loss"] < math.log(256) - 0.5  # well below a uniform guess


class Crash(RuntimeError):
    pass


def crash_after_checkpoint(at_step: int):
    def reporter(row, checkpoint):
        if row["step"] == at_step:
            assert checkpoint is not None
            raise Crash

    return reporter


@pytest.mark.parametrize("projection", [False, True])
def test_resumed_trial_equals_an_uninterrupted_one(tmp_path, projection):
    cfg = tiny_lockin_config(**{"regularizer.projection": projection})
    run_trial(cfg, tmp_path / "straight", progress=False)

    with pytest.raises(Crash):
        run_trial(cfg, tmp_path / "resumed", progress=False, reporter=crash_after_checkpoint(20))
    assert not (tmp_path / "resumed" / "summary.json").exists()
    run_trial(cfg, tmp_path / "resumed", progress=False)

    straight = read_outputs(tmp_path / "straight")
    resumed = read_outputs(tmp_path / "resumed")
    pd.testing.assert_frame_equal(straight[1], resumed[1])  # flips.parquet
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "straight" / "tensor_metrics.parquet"),
        pd.read_parquet(tmp_path / "resumed" / "tensor_metrics.parquet"),
    )
    columns = [c for c in METRIC_COLUMNS if c != "elapsed_s"]
    pd.testing.assert_frame_equal(straight[0][columns], resumed[0][columns])
    drop = lambda s: {k: v for k, v in s.items() if k not in TIMING_KEYS}  # noqa: E731
    assert drop(straight[2]) == drop(resumed[2])
    if projection:
        assert straight[2]["final_flip_ratio"] == 0.0  # the template is enforced exactly


def test_checkpoint_of_a_different_config_is_refused(tmp_path):
    cfg = tiny_lockin_config(steps=10, checkpoint_every=None)
    run_trial(cfg, tmp_path / "run", progress=False)
    from signlock.trainables.errors import ConfigError

    config_before = (tmp_path / "run" / "config.json").read_bytes()
    metrics_before = (tmp_path / "run" / "metrics.parquet").read_bytes()
    changed = cfg.with_overrides({"seed": 1, "optim.lr": 0.002})
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.003 -> 0\.002, seed: 0 -> 1"):
        run_trial(changed, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.json").read_bytes() == config_before
    assert (tmp_path / "run" / "metrics.parquet").read_bytes() == metrics_before


def test_summary_has_every_promised_field_with_integer_counts(tmp_path):
    summary = run_trial(tiny_lockin_config(steps=10), tmp_path / "run", progress=False)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(written) == sorted(SUMMARY_FIELDS)  # sort_keys
    assert set(summary) == set(SUMMARY_FIELDS)
    for key in ("steps", "projection_changes_total", "zero_crossings", "n_tracked"):
        assert type(written[key]) is int, key
    assert written["steps"] == 10
    assert 0.0 <= written["final_flip_ratio"] <= 1.0
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert written["final_flip_ratio"] == metrics["flip_vs_init"].iloc[-1]
    assert written["flip_mean"] == pytest.approx(metrics["flip_mean"].iloc[-1])


def test_nan_loss_raises_and_keeps_what_was_computed(tmp_path):
    cfg = tiny_lockin_config(checkpoint_every=None)
    trial = Trial(cfg, tmp_path / "run", progress=False)

    def poison(row, _checkpoint):
        if row["step"] == 10:
            with torch.no_grad():
                trial.model.tok_emb.weight.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="step 10") as caught:
        trial.run(poison)
    assert str(tmp_path / "run") in str(caught.value)
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert metrics["step"].tolist() == [5, 10]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_vision_mlp_smoke_on_a_local_npz(tmp_path, tiny_mnist_npz):
    cfg = trial_preset("vision-mlp-smoke").with_overrides(
        {
            "data.path": str(tiny_mnist_npz),
            "steps": 20,
            "log_every": 10,
            "eval_every": 10,
            "data.batch_size": 16,
        }
    )
    summary = run_trial(cfg, tmp_path / "run", progress=False)
    assert 0.0 <= summary["val_error"] <= 1.0
    assert summary["val_ppl"] is None
    assert summary["n_tracked"] == 784 * 256 + 256 * 256 + 256 * 10


def test_scale_debug_trains_in_bf16_with_sampled_tracking(tmp_path, seeded_cache):
    cfg = trial_preset("scale-debug").with_overrides(
        {"steps": 10, "log_every": 5, "eval_every": 10}
    )
    trial = Trial(cfg, tmp_path / "run", progress=False)
    assert trial.model.lm_head.weight.dtype == torch.bfloat16
    summary = trial.run()
    tensors = [n for n, p in trial.model.named_parameters() if p.dim() >= 2]
    expected = sum(min(2048, p.numel()) for n, p in trial.model.named_parameters() if n in tensors)
    assert summary["n_tracked"] == expected
    assert math.isfinite(summary["val_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on a GPU machine)")
def test_scale_debug_trains_and_resumes_on_cuda(tmp_path, seeded_cache):
    """The C.5 CUDA paths in one trial: bf16 weights with fp32 LayerNorms under bf16 autocast,
    gradient checkpointing, AdamW8bit where bitsandbytes imports, the tracker on the GPU, a
    checkpoint written and resumed (tensors saved from the GPU, loaded weights_only)."""
    cfg = trial_preset("scale-debug").with_overrides(
        {"device": "cuda", "steps": 20, "log_every": 5, "checkpoint_every": 10, "eval_every": 10}
    )
    with pytest.raises(Crash):
        run_trial(cfg, tmp_path / "run", progress=False, reporter=crash_after_checkpoint(10))
    trial = Trial(cfg, tmp_path / "run", progress=False)
    assert trial.model.blocks[0].ln1.weight.dtype == torch.float32
    group = trial.tracker._groups[0]
    assert group.device.type == "cuda" and group.backend == "torch"
    restored = trial.restore()
    assert restored is not None and restored.step == 10
    summary = trial.run()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        assert summary["optimizer"] == "AdamW"
    else:
        assert summary["optimizer"] == "AdamW8bit"
    assert summary["device"].startswith("cuda")
    assert math.isfinite(summary["val_loss"]) and math.isfinite(summary["final_train_loss"])
    flips = pd.read_parquet(tmp_path / "run" / "flips.parquet")
    pooled = flips[flips.tensor == "__pooled__"]["count"].sum()
    assert pooled == summary["n_tracked"]
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert metrics.step.tolist() == [5, 10, 15, 20]
