"""What every trial family provides (:class:`Family`) and the model pieces families share.

A family is one kind of trial: its model config class (``model.kind``), model builder, task,
datasets, validation objective and the planner's view of it (data units per step, vocabulary,
activation memory). ``signlock.trainables.families`` registers them; nothing else asks which
kind of trial it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from signlock.trainables.config import ModelConfig, TrialConfig
    from signlock.trainables.tasks import Task

FP32 = 4  # bytes
DataUnit = Literal["tokens", "samples"]
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def torch_dtype(cfg: ModelConfig) -> torch.dtype:
    """The storage dtype of the weights (C.5 stores them in bf16; LayerNorm stays fp32)."""
    return _DTYPES[cfg.dtype]


def element_size(cfg: ModelConfig) -> int:
    """Bytes per weight or activation element at the model's dtype."""
    return _DTYPES[cfg.dtype].itemsize


def gaussian_init(
    model: nn.Module,
    sigma_init: float,
    weighted: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding),
) -> None:
    """Baseline "GPT-like" initialisation (C.4.1, C.5, E.2.1), in place, from the global RNG:
    the weight of every ``weighted`` module ~ N(0, σ_init²), its bias 0; LayerNorm weight 1 and
    bias 0. Modules are visited in registration order, so a seeded RNG gives the same draws."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, weighted):
                nn.init.normal_(module.weight, mean=0.0, std=sigma_init)
                bias = getattr(module, "bias", None)
                if bias is not None:
                    nn.init.zeros_(bias)
            if isinstance(module, nn.LayerNorm):
                _init_layer_norm(module)


def _init_layer_norm(module: nn.LayerNorm) -> None:
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def baseline_init(model: nn.Module, cfg: ModelConfig) -> None:
    """:func:`gaussian_init` over Linear and Embedding layers (C.4.1, E.2.1)."""
    gaussian_init(model, cfg.sigma_init)


def samples_per_step(cfg: TrialConfig) -> int:
    """Images (samples) per optimizer step of a classifier: its batch size."""
    return cfg.data.batch_size


def no_vocabulary(cfg: TrialConfig) -> None:
    """Image classifiers read no tokens."""
    del cfg


def each_weight_once(cfg: TrialConfig, params: int) -> int:
    """Forward multiply-adds per token or image when every parameter is used once (6·N·D)."""
    del cfg
    return params


def no_checks(cfg: TrialConfig) -> None:
    """A family without cross-field checks of its own."""
    del cfg


@dataclass(frozen=True)
class Family:
    """One kind of trial, registered in ``FAMILIES`` under ``name`` (the ``model.kind``).

    ``build_model(model_cfg, vocab_size)`` constructs the model (the caller picks the device and
    initialises it with ``init_weights``); ``make_task(trial_cfg, device)`` its task.
    ``objective`` is the training loss in words, averaged over ``unit`` (``tokens`` or
    ``samples``), ``units_per_step`` of them per optimizer step. ``vocab_size`` is the token
    vocabulary the planner expects before any data is read (None without tokens).
    ``activation_bytes(trial_cfg, vocab)`` is what one training step saves for backward, without
    and with per-block gradient checkpointing; ``forward_macs(trial_cfg, params)`` the forward
    multiply-adds per unit (the parameter count unless weights are reused, as a CNN's kernels).
    ``validation_metric`` (a name of :mod:`signlock.trainables.schema`) is what sweeps minimise;
    ``label`` a short name of one trial's architecture for plans; ``init_weights`` the family's
    baseline initialisation; ``check_trial`` its own cross-field checks."""

    name: str
    title: str
    config_class: type[ModelConfig]
    build_model: Callable[[Any, int | None], nn.Module]
    make_task: Callable[[TrialConfig, torch.device], Task]
    datasets: tuple[str, ...]
    objective: str
    unit: DataUnit
    units_per_step: Callable[[TrialConfig], int]
    vocab_size: Callable[[TrialConfig], int | None]
    activation_bytes: Callable[[TrialConfig, int | None], tuple[int, int]]
    validation_metric: str
    label: Callable[[TrialConfig], str]
    forward_macs: Callable[[TrialConfig, int], int] = each_weight_once
    init_weights: Callable[[nn.Module, Any], None] = baseline_init
    check_trial: Callable[[TrialConfig], None] = no_checks
