"""Trial families: which kind of trial a config is, asked in one place.

Each family module (``gpt``, ``mlp``, ``cnn``) holds its model config class, model, task and the
planner's view of it, and exports one :class:`Family`; ``REGISTERED`` lists them and
``FAMILIES`` maps ``model.kind`` to each. :func:`family_of` answers for a trial config or its
model config. Adding a family is a module and a line in ``REGISTERED``: the config schema, the
datasets ``data.dataset`` accepts, the builder, the task, the planner, ``status``, ``query`` and
the analysis all ask the registry.
"""

from __future__ import annotations

import functools
import typing
from typing import Any, Literal

from signlock.trainables.config import ModelConfig, TrialConfig
from signlock.trainables.families import cnn, gpt, mlp
from signlock.trainables.families.base import Family

REGISTERED: tuple[Family, ...] = (gpt.FAMILY, mlp.FAMILY, cnn.FAMILY)
FAMILIES: dict[str, Family] = {family.name: family for family in REGISTERED}


def family_of(config: TrialConfig | ModelConfig) -> Family:
    """The family of a trial config or of its model config."""
    model = config.model if isinstance(config, TrialConfig) else config
    return FAMILIES[model.kind]


def dataset_names() -> tuple[str, ...]:
    """Every dataset some family trains on, each once, in registration order."""
    return tuple(dict.fromkeys(name for family in REGISTERED for name in family.datasets))


@functools.cache
def model_field_hints() -> dict[str, Any]:
    """The type of every model field of every family (``kind``: the registered names). Families
    that share a field name must give it one type."""
    hints: dict[str, Any] = {}
    for family in REGISTERED:
        for name, hint in typing.get_type_hints(family.config_class).items():
            if name != "kind" and hints.setdefault(name, hint) != hint:
                raise TypeError(f"model.{name} has two types across the registered families")
    hints["kind"] = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
    return hints


__all__ = ["FAMILIES", "REGISTERED", "Family", "dataset_names", "family_of", "model_field_hints"]
