"""The CNN family: its model, offline images, tracked Conv kernels (C_out × C_in·k_h·k_w,
C.3.2), the interventions on them, and ``signlock train --preset vision-cnn-smoke`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch import nn

from signlock.analysis.probes import as_matrix
from signlock.search_spaces.presets import trial_preset
from signlock.trainables.config import DataConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.families.cnn import (
    SYNTHETIC_IMAGES,
    CNNConfig,
    VisionCNN,
    synthetic_images,
)
from signlock.trainables.models import build_model, count_parameters, matrix_parameters
from signlock.trainables.tracker import POOLED
from signlock.trainables.trainer import Trial

CONV_KERNELS = {"convs.0.weight": (8, 1, 3, 3), "convs.1.weight": (16, 8, 3, 3)}


def test_the_cnn_classifies_28_by_28_images_and_its_kernels_are_matrix_shaped():
    model = build_model(CNNConfig(channels=[8, 16], kernel_size=3))
    assert isinstance(model, VisionCNN)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    shapes = {name: tuple(p.shape) for name, p in matrix_parameters(model)}
    assert shapes == {**CONV_KERNELS, "head.weight": (10, 16 * 7 * 7)}
    kernels = (8 * 9 + 8) + (16 * 8 * 9 + 16)
    assert count_parameters(model) == kernels + 16 * 49 * 10 + 10
    assert as_matrix(model.convs[1].weight).shape == (16, 8 * 9)  # C_out × C_in·k_h·k_w


def test_conv_kernels_get_the_baseline_gaussian_init():
    torch.manual_seed(0)
    model = build_model(CNNConfig(channels=[64, 64], kernel_size=5, sigma_init=0.05))
    kernel = model.convs[1].weight  # 64 · 64 · 25 draws
    assert abs(kernel.std().item() - 0.05) < 0.05 * 0.03 and abs(kernel.mean().item()) < 0.002
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert torch.count_nonzero(module.bias) == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"channels": []}, "model.channels"), ({"channels": [1] * 5}, "model.channels"),
     ({"kernel_size": 4}, "model.kernel_size"), ({"sigma_init": 0.0}, "model.sigma_init")],
)  # fmt: skip
def test_bad_cnn_fields_name_themselves(fields, field):
    with pytest.raises(ConfigError) as caught:
        CNNConfig(**fields)
    assert caught.value.field == field


def test_synthetic_images_are_offline_labelled_and_seeded():
    data = DataConfig(dataset=SYNTHETIC_IMAGES)
    images, again = synthetic_images(data), synthetic_images(data)
    assert images.x_train.shape[1:] == (1, 28, 28) and images.x_train.dtype == torch.float32
    assert len(images.x_val) == round(0.1 * (len(images.x_train) + len(images.x_val)))
    assert set(images.y_train.tolist()) == set(range(10))
    assert torch.equal(images.x_train, again.x_train) and torch.equal(images.y_val, again.y_val)
    other = synthetic_images(DataConfig(dataset=SYNTHETIC_IMAGES, synthetic_seed=1))
    assert not torch.equal(images.x_train, other.x_train)


def test_the_cnn_trains_on_mnist_too(tiny_mnist_npz, tmp_path):
    cfg = trial_preset("vision-cnn-smoke").with_overrides(
        {"data.dataset": "mnist", "data.path": str(tiny_mnist_npz), "steps": 4, "log_every": 2,
         "eval_every": 2, "data.batch_size": 8}
    )  # fmt: skip
    summary = Trial(cfg, tmp_path / "run", progress=False).run()
    assert summary["steps"] == 4 and 0.0 <= summary["val_error"] <= 1.0


def test_templates_and_projection_act_on_conv_kernels_as_matrices(tmp_path):
    """E.3.1/E.3.2 on a Conv kernel: T = sign(G Hᵀ) over C_out × C_in·k_h·k_w, kept by the hard
    projection through training."""
    cfg = trial_preset("vision-cnn-smoke").with_overrides(
        {"steps": 10, "log_every": 5, "eval_every": 5, "init.template_rank": 1,
         "init.a_init": 0.02, "regularizer.lam": 0.01, "regularizer.projection": True}
    )  # fmt: skip
    trial = Trial(cfg, tmp_path / "run", progress=False)
    trial.run()
    kernel = trial.model.convs[1].weight.detach()
    template = trial.interventions.templates["convs.1.weight"].to(kernel.dtype)
    assert template.shape == kernel.shape
    assert torch.linalg.matrix_rank(template.reshape(16, -1)) == 1  # rank-1 sign pattern
    assert torch.all(kernel * template >= 0)


def test_signlock_train_vision_cnn_smoke_tracks_the_conv_kernels(tmp_path):
    command = [sys.executable, "-m", "signlock.orchestrator.cli", "train", "--preset",
               "vision-cnn-smoke", "--quiet"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "signlock-runs" / "vision-cnn-smoke"
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert metrics["step"].tolist() == [25, 50, 75, 100]
    assert metrics["val_error"].notna().sum() == 2 and metrics["val_ppl"].isna().all()
    flips = pd.read_parquet(run_dir / "flips.parquet")
    assert set(flips["tensor"]) == {*CONV_KERNELS, "head.weight", POOLED}
    counts = flips.groupby("tensor")["count"].sum()
    for name, shape in CONV_KERNELS.items():
        assert counts[name] == torch.Size(shape).numel()  # every kernel scalar tracked
    stats = pd.read_parquet(run_dir / "tensor_stats.parquet").set_index("tensor")
    assert stats.loc["convs.0.weight", "n_tracked"] == 72
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val_ppl"] is None and summary["val_error"] < 0.9
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == {"kind": "cnn", "channels": [8, 16], "kernel_size": 3,
                               "sigma_init": 0.02, "dtype": "float32",
                               "gradient_checkpointing": False}  # fmt: skip
