"""Command-line overrides: ``--set KEY=VALUE`` pairs, applied to a trial config or a sweep spec.

Values are read as YAML (``--set init.targets=[a, b]``) and converted to the field's type by the
trial config's schema, like every other input. On a sweep, ``spec.FIELD`` (or
``spec.resources.X``) replaces a sweep field; any other key is a dotted trial override added to
the spec's ``set``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from signlock.search_spaces.axes import check_key, coerce_override, number_or_raw
from signlock.search_spaces.spec import SweepSpec
from signlock.search_spaces.spec_parsing import (
    RESOURCE_FIELDS,
    parse_axes,
    parse_points,
    parse_seeds,
)
from signlock.trainables.errors import ConfigError

SPEC_PREFIX = "spec."
# spec.FIELD overrides: the field's parser (identity where the dataclass validates it as is).
_SPEC_FIELD_PARSERS: dict[str, Any] = {
    "name": lambda value: value,
    "description": lambda value: value,
    "num_samples": lambda value: value,
    "search": lambda value: value,
    "budget": lambda value: value,
    "seeds": parse_seeds,
    "axes": parse_axes,
    "points": parse_points,
}


def parse_assignments(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["optim.lr=1e-3", "init.targets=[a, b]"]`` → ``{"optim.lr": "1e-3", ...}`` (YAML
    values, not yet converted to field types)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(flag, pair, "KEY=VALUE with a dotted key, e.g. optim.lr=1e-3")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            first = str(error).splitlines()[0]
            raise ConfigError(flag, pair, f"KEY=VALUE with a YAML value ({first})") from None
    return overrides


def apply_overrides(spec: SweepSpec, overrides: dict[str, Any]) -> SweepSpec:
    """``spec`` with ``overrides`` applied and validated again."""
    changes: dict[str, Any] = {}
    trial_overrides: dict[str, Any] = {}
    for key, value in overrides.items():
        if key.startswith(SPEC_PREFIX):
            changes.update(_spec_change(key, value))
        else:
            trial_overrides[check_key(key, "--set")] = coerce_override(key, value)
    if trial_overrides:
        changes["base_overrides"] = {**spec.base_overrides, **trial_overrides}
        changes["base"] = spec.base.with_overrides(trial_overrides)
    return replace(spec, **changes)


def _spec_change(key: str, value: Any) -> dict[str, Any]:
    field_name = key.removeprefix(SPEC_PREFIX)
    if field_name in _SPEC_FIELD_PARSERS:
        return {field_name: _SPEC_FIELD_PARSERS[field_name](value)}
    resource = field_name.removeprefix("resources.")
    if resource in RESOURCE_FIELDS and field_name != resource:
        return {resource: number_or_raw(value)}
    allowed = [*_SPEC_FIELD_PARSERS, *(f"resources.{r}" for r in RESOURCE_FIELDS)]
    raise ConfigError(key, value, "spec.FIELD with FIELD one of " + ", ".join(allowed))


__all__ = ["apply_overrides", "parse_assignments"]
