"""Building a trial's model, whatever its family: :func:`build_model` (the one entry point the
trainer uses), :func:`init_weights`, and the parameter lists the interventions, the tracker and
the planner walk.

The architectures themselves live with their trial families (:mod:`signlock.trainables.families`:
the GPT of C.3.6/C.4/C.5 with the Table 1 scale family, the VisionMLP of E.2.1, the CNN); their
classes are re-exported here under the names earlier versions gave them.
"""

from __future__ import annotations

import torch
from torch import nn

from signlock.trainables.config import ModelConfig
from signlock.trainables.families import family_of
from signlock.trainables.families.base import torch_dtype
from signlock.trainables.families.gpt import (
    GPT,
    SCALE_CONFIGS,
    SCALE_CONTEXT_LENGTH,
    TINYSHAKESPEARE_VOCAB,
    LayerNorm,
    ScaleSpec,
    scale_model_config,
)
from signlock.trainables.families.mlp import VisionMLP


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """The baseline "GPT-like" initialisation of ``cfg``'s family (C.4.1, C.5, E.2.1), in place,
    from the global RNG: every Linear and Embedding weight (and a CNN's Conv kernels) ~
    N(0, σ_init²), biases 0, LayerNorm weight 1 and bias 0; a GPT's position embedding zero for
    ``pos_init="zero"`` (C.5). Modules are visited in registration order, so the draws are
    reproducible for a seeded RNG."""
    family_of(cfg).init_weights(model, cfg)


def matrix_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters with ``dim >= 2`` in registration order: the default target set of the
    interventions and of the sign tracker ("all matrix-shaped parameters", C.4.1, C.4.2)."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() >= 2]


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (shared tensors counted once); works on ``meta`` models."""
    return sum(p.numel() for p in model.parameters())


def build_model(
    cfg: ModelConfig, *, vocab_size: int | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the model of ``cfg``'s family on ``device`` and apply ``init_weights``.

    The module tree is created on the ``meta`` device (no memory, no wasted default init), then
    materialised with ``to_empty`` and initialised in place, so even the 12.9B model of C.5 is
    only ever allocated once, directly on its device. ``device="meta"`` returns the
    un-materialised model (for parameter counting and shape checks)."""
    device = torch.device(device)
    with torch.device("meta"):
        model = family_of(cfg).build_model(cfg, vocab_size)
    if device.type == "meta":
        return model
    model = model.to_empty(device=device)
    init_weights(model, cfg)
    return model


__all__ = [
    "GPT",
    "SCALE_CONFIGS",
    "SCALE_CONTEXT_LENGTH",
    "TINYSHAKESPEARE_VOCAB",
    "LayerNorm",
    "ScaleSpec",
    "VisionMLP",
    "build_model",
    "count_parameters",
    "init_weights",
    "matrix_parameters",
    "scale_model_config",
    "torch_dtype",
]
