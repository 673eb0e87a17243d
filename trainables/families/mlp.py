"""The MLP family: the MNIST VisionMLP of E.2.1 (Flatten -> Linear/ReLU × 2 -> Linear to 10
classes), trained by :class:`signlock.trainables.tasks.ImageClassificationTask` on MNIST."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

from signlock.trainables import mnist
from signlock.trainables.config import ModelConfig, TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.families.base import (
    FP32,
    Family,
    element_size,
    no_vocabulary,
    samples_per_step,
    torch_dtype,
)
from signlock.trainables.schema import VAL_ERROR
from signlock.trainables.tasks import ImageClassificationTask

IN_FEATURES = 784  # a flattened 1 × 28 × 28 MNIST image (E.2.1)
N_CLASSES = 10


@dataclass(kw_only=True)
class MLPConfig(ModelConfig):
    """The VisionMLP of E.2.1: hidden widths ``hidden_sizes`` (paper: [256, 256])."""

    kind: Literal["mlp"] = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not all(h >= 1 for h in self.hidden_sizes):
            raise ConfigError("model.hidden_sizes", self.hidden_sizes, "positive integers")


class VisionMLP(nn.Module):
    """MNIST MLP of E.2.1: Flatten -> Linear(784, h1) -> ReLU -> Linear(h1, h2) -> ReLU ->
    Linear(h2, 10), with the hidden widths from ``cfg.hidden_sizes`` (paper: [256, 256]).
    The Linear layers are ``layers.0``, ``layers.1``, ... in order."""

    def __init__(
        self, cfg: MLPConfig, in_features: int = IN_FEATURES, n_classes: int = N_CLASSES
    ) -> None:
        super().__init__()
        widths = [in_features, *cfg.hidden_sizes, n_classes]
        dtype = torch_dtype(cfg)
        self.flatten = nn.Flatten()
        self.layers = nn.ModuleList(
            nn.Linear(d_in, d_out, bias=True, dtype=dtype) for d_in, d_out in pairwise(widths)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x).to(self.layers[0].weight.dtype)  # (B, 784) from (B, 1, 28, 28)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))  # (B, h_i)
        return self.layers[-1](x)  # (B, n_classes)


def build_mlp(cfg: MLPConfig, vocab_size: int | None) -> VisionMLP:
    del vocab_size  # the MNIST MLP has a fixed 784 -> 10 interface (E.2.1)
    return VisionMLP(cfg)


def make_mnist_task(cfg: TrialConfig, device: torch.device) -> ImageClassificationTask:
    return ImageClassificationTask(cfg, device, mnist.load_mnist(cfg.data))


def activation_bytes_per_sample(model: MLPConfig) -> int:
    """Its fp32 input, each hidden ReLU output (saved by ReLU and the next Linear), the
    log-softmax of the 10 logits and its gradient buffers."""
    hidden = element_size(model) * sum(model.hidden_sizes)
    return FP32 * IN_FEATURES + hidden + 3 * FP32 * N_CLASSES


def step_activation_bytes(cfg: TrialConfig, vocab: int | None) -> tuple[int, int]:
    """One training step's activations (nothing to checkpoint: the same either way)."""
    del vocab
    step = activation_bytes_per_sample(cfg.model) * cfg.data.batch_size  # type: ignore[arg-type]
    return step, step


def label(cfg: TrialConfig) -> str:
    """``mlp 256-256``."""
    return "mlp " + "-".join(str(h) for h in cfg.model.hidden_sizes)  # type: ignore[attr-defined]


FAMILY = Family(
    name="mlp",
    title="MNIST MLP classifier (E.2)",
    config_class=MLPConfig,
    build_model=build_mlp,
    make_task=make_mnist_task,
    datasets=(mnist.DATASET,),
    objective="cross-entropy of the 10 digit classes",
    unit="samples",
    units_per_step=samples_per_step,
    vocab_size=no_vocabulary,
    activation_bytes=step_activation_bytes,
    validation_metric=VAL_ERROR,
    label=label,
)
