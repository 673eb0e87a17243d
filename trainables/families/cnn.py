"""The CNN family: a small convolutional image classifier, the trained counterpart of the
convolutional networks Section 2 probes (ResNet18, C.3.1).

``VisionCNN``: per entry of ``channels`` a ``kernel_size`` × ``kernel_size`` Conv2d (same
padding) -> ReLU -> 2 × 2 max-pool, then one Linear head to 10 classes, on 1 × 28 × 28 images.
Its Conv kernels are matrix-shaped parameters (dim >= 2), so the sign tracker and the
interventions take them like any Linear weight, seen as C_out × (C_in·k_h·k_w) matrices as C.3.2
flattens Conv2d kernels. It trains on MNIST (E.2.1) or, offline, on ``synthetic-images``: ten
classes, each a fixed random ±1 pattern of 4 × 4 blocks, every image its class's pattern plus
N(0, 1) pixel noise (the generator is ours; the paper trains no CNN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

from signlock.trainables import mnist
from signlock.trainables.config import DataConfig, ModelConfig, TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.families.base import (
    FP32,
    Family,
    element_size,
    gaussian_init,
    no_vocabulary,
    samples_per_step,
    torch_dtype,
)
from signlock.trainables.mnist import ImageData
from signlock.trainables.schema import VAL_ERROR
from signlock.trainables.tasks import ImageClassificationTask

SYNTHETIC_IMAGES = "synthetic-images"
IMAGE_SIDE = 28  # 1 × 28 × 28 inputs, as MNIST's (E.2.1)
IN_CHANNELS = 1
N_CLASSES = 10
MAX_STAGES = 4  # 2 × 2 pooling: 28 -> 14 -> 7 -> 3 -> 1
SYNTHETIC_COUNT = 2400  # synthetic images split into train and validation (+ as many test / 6)
PATTERN_BLOCK = 4  # class patterns: ±1 on a 7 × 7 grid of 4 × 4 pixel blocks
NOISE_STD = 1.0
INDEX_BYTES = 8  # int64 argmax index per pooled value, saved for backward


@dataclass(kw_only=True)
class CNNConfig(ModelConfig):
    """Conv stages of ``channels`` output channels each (kernel ``kernel_size``, odd), a Linear
    head to 10 classes."""

    kind: Literal["cnn"] = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= len(self.channels) <= MAX_STAGES or min(self.channels) < 1:
            raise ConfigError(
                "model.channels",
                self.channels,
                f"1 to {MAX_STAGES} positive integers (one 2 × 2 pooling each on 28 × 28)",
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError("model.kernel_size", self.kernel_size, "an odd integer >= 1")


def pooled_sides(cfg: CNNConfig) -> list[int]:
    """Image side at the input of each stage, then after the last pooling."""
    sides = [IMAGE_SIDE]
    for _ in cfg.channels:
        sides.append(sides[-1] // 2)
    return sides


class VisionCNN(nn.Module):
    """Conv2d -> ReLU -> MaxPool2d(2) per stage (``convs.0``, ``convs.1``, …), then ``head``."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        dtype, k = torch_dtype(cfg), cfg.kernel_size
        widths = [IN_CHANNELS, *cfg.channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, k, padding=k // 2, dtype=dtype)
            for c_in, c_out in pairwise(widths)
        )
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        side = pooled_sides(cfg)[-1]
        self.head = nn.Linear(cfg.channels[-1] * side * side, N_CLASSES, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.head.weight.dtype)  # (B, 1, 28, 28)
        for conv in self.convs:
            x = self.pool(self.act(conv(x)))  # (B, C_out, side / 2, side / 2)
        return self.head(x.flatten(1))  # (B, 10)


def build_cnn(cfg: CNNConfig, vocab_size: int | None) -> VisionCNN:
    del vocab_size  # a fixed 1 × 28 × 28 -> 10 interface
    return VisionCNN(cfg)


def init_cnn(model: nn.Module, cfg: CNNConfig) -> None:
    """The baseline initialisation (C.4.1, E.2.1) with Conv kernels drawn like Linear weights:
    N(0, σ_init²), biases 0."""
    gaussian_init(model, cfg.sigma_init, (nn.Linear, nn.Conv2d))


# ---------------------------------------------------------------------------------------------
# Data and task
# ---------------------------------------------------------------------------------------------


def synthetic_images(data: DataConfig) -> ImageData:
    """``SYNTHETIC_COUNT`` labelled images (``val_fraction`` of them validation) and a test set
    of a sixth as many, all from one generator seeded with ``data.synthetic_seed``."""
    generator = torch.Generator().manual_seed(data.synthetic_seed)
    grid = IMAGE_SIDE // PATTERN_BLOCK
    signs = torch.randint(0, 2, (N_CLASSES, IN_CHANNELS, grid, grid), generator=generator)
    patterns = (2.0 * signs - 1.0).repeat_interleave(PATTERN_BLOCK, -1)
    patterns = patterns.repeat_interleave(PATTERN_BLOCK, -2)  # (10, 1, 28, 28)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
        noise = torch.randn(n, IN_CHANNELS, IMAGE_SIDE, IMAGE_SIDE, generator=generator)
        return patterns[labels] + NOISE_STD * noise, labels

    n_val = max(1, round(SYNTHETIC_COUNT * data.val_fraction))
    x_train, y_train = draw(SYNTHETIC_COUNT - n_val)
    x_val, y_val = draw(n_val)
    x_test, y_test = draw(SYNTHETIC_COUNT // 6)
    return ImageData(x_train, y_train, x_val, y_val, x_test, y_test)


def load_images(data: DataConfig) -> ImageData:
    if data.dataset == SYNTHETIC_IMAGES:
        return synthetic_images(data)
    return mnist.load_mnist(data)


def make_image_task(cfg: TrialConfig, device: torch.device) -> ImageClassificationTask:
    return ImageClassificationTask(cfg, device, load_images(cfg.data))


# ---------------------------------------------------------------------------------------------
# Planner
# ---------------------------------------------------------------------------------------------


def activation_bytes_per_sample(cfg: CNNConfig) -> int:
    """The fp32 input plus the most that is live at once from then on. Each stage saves its ReLU
    output (for ReLU and the pooling), the pooling's int64 indices and its output (the next
    layer's input). Backward through stage i holds the saved tensors of the stages before it
    and, at the ReLU, its saved output with the gradients of that output and of the conv output
    (3 × the ReLU output); at the end of forward every stage's tensors and the log-softmax of
    the 10 logits with its gradient buffers are live."""
    s, sides = element_size(cfg), pooled_sides(cfg)
    saved_before, backward_peak = 0, 0
    for channels, side_in, side_out in zip(cfg.channels, sides, sides[1:], strict=False):
        relu_out = s * channels * side_in**2
        backward_peak = max(backward_peak, saved_before + 3 * relu_out)
        saved_before += relu_out + (INDEX_BYTES + s) * channels * side_out**2
    forward_end = saved_before + 3 * FP32 * N_CLASSES
    return FP32 * IN_CHANNELS * IMAGE_SIDE**2 + max(backward_peak, forward_end)


def step_activation_bytes(cfg: TrialConfig, vocab: int | None) -> tuple[int, int]:
    """One training step's activations (no gradient checkpointing: the same either way)."""
    del vocab
    step = activation_bytes_per_sample(cfg.model) * cfg.data.batch_size  # type: ignore[arg-type]
    return step, step


def forward_macs(cfg: TrialConfig, params: int) -> int:
    """Multiply-adds of one image's forward pass: every kernel weight at each of its stage's
    positions (same padding), the head's weights once."""
    model: CNNConfig = cfg.model  # type: ignore[assignment]
    sides = pooled_sides(model)
    widths = [IN_CHANNELS, *model.channels]
    convs = sum(
        c_out * c_in * model.kernel_size**2 * side**2
        for c_in, c_out, side in zip(widths, widths[1:], sides, strict=False)
    )
    head = model.channels[-1] * sides[-1] ** 2 * N_CLASSES
    del params
    return convs + head


def label(cfg: TrialConfig) -> str:
    """``cnn 16-32 k3``."""
    model: CNNConfig = cfg.model  # type: ignore[assignment]
    return "cnn " + "-".join(map(str, model.channels)) + f" k{model.kernel_size}"


FAMILY = Family(
    name="cnn",
    title="convolutional image classifier (Section 2's CNNs, trained as E.2's MLP)",
    config_class=CNNConfig,
    build_model=build_cnn,
    make_task=make_image_task,
    datasets=(SYNTHETIC_IMAGES, mnist.DATASET),
    objective="cross-entropy of the 10 image classes",
    unit="samples",
    units_per_step=samples_per_step,
    vocab_size=no_vocabulary,
    activation_bytes=step_activation_bytes,
    validation_metric=VAL_ERROR,
    label=label,
    forward_macs=forward_macs,
    init_weights=init_cnn,
)
