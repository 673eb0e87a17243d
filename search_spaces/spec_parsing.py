"""Parsing a sweep spec's YAML/JSON user form into a :class:`SweepSpec`: every field checked
and converted (lists to tuples, numeric strings to numbers, a preset name to its trial config)
before the frozen spec is built. The form and its semantics are in :mod:`.spec`."""

from __future__ import annotations

from typing import Any

from signlock.search_spaces.axes import Axis, check_key, coerce_override, naming_axis, number_or_raw
from signlock.search_spaces.presets import TRIAL_PRESETS, trial_preset
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError

SPEC_FIELDS = (
    "name",
    "description",
    "base",
    "base_preset",
    "set",
    "axes",
    "seeds",
    "num_samples",
    "points",
    "search",
    "budget",
    "resources",
)
RESOURCE_FIELDS = ("cpus_per_trial", "gpus_per_trial", "workers_per_trial")


def parse_spec(data: object) -> SweepSpec:
    """A :class:`SweepSpec` from its YAML/JSON user form (see :mod:`.spec`), validated."""
    if not isinstance(data, dict):
        raise ConfigError("spec", data, "a mapping of sweep fields")
    for key, value in data.items():
        if key not in SPEC_FIELDS:
            raise ConfigError(
                f"spec.{key}", value, "unknown field; allowed: " + ", ".join(SPEC_FIELDS)
            )
    if "name" not in data:
        raise ConfigError("spec.name", None, "a sweep name")
    base_overrides = _parse_set(data.get("set"))
    base, base_preset = _parse_base(data, base_overrides)
    cpus, gpus, workers = _parse_resources(data.get("resources"))
    return SweepSpec(
        name=data["name"],
        description=data.get("description") or "",
        base=base,
        base_preset=base_preset,
        base_overrides=base_overrides,
        axes=parse_axes(data.get("axes")),
        seeds=parse_seeds(data.get("seeds", [0])),
        num_samples=data.get("num_samples", 1),
        points=parse_points(data.get("points")),
        search=data.get("search", "grid"),
        budget=data.get("budget"),
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        workers_per_trial=workers,
    )


def _parse_list(value: object, where: str, allowed: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(where, value, allowed)
    return tuple(value)


def parse_seeds(raw: object) -> tuple[Any, ...]:
    return _parse_list(raw, "spec.seeds", "a list of integers >= 0")


def _parse_set(raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("spec.set", raw, "a mapping of dotted overrides, e.g. {steps: 500}")
    return {check_key(k, "spec.set"): coerce_override(k, v) for k, v in raw.items()}


def _parse_base(data: dict[str, Any], overrides: dict[str, Any]) -> tuple[TrialConfig, str | None]:
    raw = data.get("base")
    base_preset = data.get("base_preset")
    if isinstance(raw, str):
        if raw not in TRIAL_PRESETS:
            raise ConfigError("spec.base", raw, "one of " + ", ".join(TRIAL_PRESETS))
        if base_preset is not None and base_preset != raw:
            raise ConfigError("spec.base_preset", base_preset, f"null or {raw!r} (spec.base)")
        return trial_preset(raw).with_overrides(overrides), raw
    if isinstance(raw, dict):
        if base_preset is not None and base_preset not in TRIAL_PRESETS:
            raise ConfigError(
                "spec.base_preset", base_preset, "null or one of " + ", ".join(TRIAL_PRESETS)
            )
        return TrialConfig.from_dict(raw).with_overrides(overrides), base_preset
    raise ConfigError(
        "spec.base", raw, "a trial preset name (`signlock presets`) or a mapping of trial fields"
    )


def parse_axes(raw: object) -> tuple[Axis, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError("spec.axes", raw, "a mapping: dotted field -> {KIND: ...}")
    axes = []
    for i, (key, body) in enumerate(raw.items()):
        where = f"spec.axes[{i}]"
        check_key(key, f"{where}.key")
        try:
            axes.append(Axis.from_dict(key, body, where))
        except ConfigError as error:
            raise naming_axis(error, key) from None
    return tuple(axes)


def parse_points(raw: object) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    points = _parse_list(raw, "spec.points", "a list of mappings of dotted overrides")
    parsed = []
    for j, point in enumerate(points):
        if not isinstance(point, dict):
            raise ConfigError(f"spec.points[{j}]", point, "a mapping of dotted overrides")
        parsed.append(
            {check_key(k, f"spec.points[{j}]"): coerce_override(k, v) for k, v in point.items()}
        )
    return tuple(parsed)


def _parse_resources(raw: object) -> tuple[Any, Any, Any]:
    if raw is None:
        return 1.0, 0.0, 1
    if not isinstance(raw, dict):
        raise ConfigError("spec.resources", raw, "a mapping of " + ", ".join(RESOURCE_FIELDS))
    for key in raw:
        if key not in RESOURCE_FIELDS:
            raise ConfigError(
                f"spec.resources.{key}", raw[key], "unknown; allowed: " + ", ".join(RESOURCE_FIELDS)
            )
    return (
        number_or_raw(raw.get("cpus_per_trial", 1.0)),
        number_or_raw(raw.get("gpus_per_trial", 0.0)),
        raw.get("workers_per_trial", 1),
    )
