"""Axes of a sweep: one swept dotted TrialConfig field and how its values are chosen.

``grid``: every value is a separate grid point; ``choice``: sampled among values; ``uniform`` /
``loguniform``: sampled in ``[low, high]``. The key ``preset`` takes trial preset names instead
of a field (a point then starts from that preset). Values are converted to the field's type by
the trial config's own schema (:func:`signlock.trainables.config.coerce_field`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from signlock.search_spaces.presets import TRIAL_PRESETS
from signlock.trainables.config import coerce_field, field_hint, parse_float
from signlock.trainables.errors import ConfigError

AXIS_KINDS = ("grid", "choice", "uniform", "loguniform")
VALUE_KINDS = ("grid", "choice")  # axes given by explicit values
RANGE_KINDS = ("uniform", "loguniform")  # axes given by [low, high]
PRESET_KEY = "preset"  # axis / point key whose values are trial preset names
RESERVED_KEYS = ("name", "seed")  # set per trial by the expansion itself


def check_key(key: object, where: str) -> str:
    """A dotted TrialConfig field name (or ``preset``); raises ``ConfigError(where, ...)``."""
    if not isinstance(key, str) or not key:
        raise ConfigError(where, key, "a dotted TrialConfig field name, e.g. optim.lr")
    if key in RESERVED_KEYS:
        raise ConfigError(where, key, "not name or seed (set per trial; use spec.seeds)")
    if key == PRESET_KEY:
        return key
    try:
        field_hint(key)
    except KeyError as missing:
        raise ConfigError(where, key, f"a dotted TrialConfig field; {missing.args[0]}") from None
    return key


def coerce_override(key: str, value: Any) -> Any:
    """A point, ``set`` or axis value for dotted ``key`` in its field's type (presets: names)."""
    return value if key == PRESET_KEY else coerce_field(key, value)


def number_or_raw(value: object) -> object:
    """A number or numeric string as a float (PyYAML reads ``1e-4`` as a string), else as is."""
    number = parse_float(value)
    return value if number is None else number


def plain(value: Any) -> Any:
    """Tuples -> lists, recursively: the JSON shape of a value."""
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Axis:
    """One swept TrialConfig field. ``grid``: every value is a separate grid point; ``choice``:
    sampled among ``values``; ``uniform`` / ``loguniform``: sampled in ``[low, high]``."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.values, list):
            object.__setattr__(self, "values", tuple(self.values))
        for name in ("low", "high"):  # a range is continuous: sampled values are floats
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))

    @property
    def is_random(self) -> bool:
        """Sampled by the searcher rather than expanded into the grid."""
        return self.kind != "grid"

    def corners(self) -> tuple[Any, ...]:
        """The values validated before anything runs: every value, or ``low`` and ``high``."""
        return self.values if self.kind in VALUE_KINDS else (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form ``{kind: [...]}`` (without the key)."""
        if self.kind in RANGE_KINDS:
            return {self.kind: [self.low, self.high]}
        return {self.kind: plain(list(self.values))}

    @classmethod
    def from_dict(cls, key: str, raw: object, where: str) -> Axis:
        """Parse ``{grid: [...]}``, ``{choice: [...]}`` or ``{uniform|loguniform: [low, high]}``."""
        allowed = "a mapping {KIND: [...]} with KIND one of " + ", ".join(AXIS_KINDS)
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ConfigError(where, raw, allowed)
        ((kind, body),) = raw.items()
        if kind not in AXIS_KINDS:
            raise ConfigError(f"{where}.kind", kind, "one of " + ", ".join(AXIS_KINDS))
        if kind in VALUE_KINDS:
            if not isinstance(body, list):
                raise ConfigError(f"{where}.values", body, f"a non-empty list of {key} values")
            return cls(key=key, kind=kind, values=tuple(coerce_override(key, v) for v in body))
        if not isinstance(body, list) or len(body) != 2:
            raise ConfigError(where, body, f"[low, high] for a {kind} axis")
        low, high = (number_or_raw(v) for v in body)
        return cls(key=key, kind=kind, low=low, high=high)  # type: ignore[arg-type]


def naming_axis(error: ConfigError, key: object) -> ConfigError:
    """``error`` with the axis key appended to its message unless it already names it."""
    if isinstance(key, str) and key in str(error):
        return error
    return ConfigError(error.field, error.value, f"{error.allowed} (axis {key})")


def check_axis(axis: object, where: str) -> None:
    if not isinstance(axis, Axis):
        raise ConfigError(where, axis, "an Axis")
    check_key(axis.key, f"{where}.key")
    try:
        if axis.kind not in AXIS_KINDS:
            raise ConfigError(f"{where}.kind", axis.kind, "one of " + ", ".join(AXIS_KINDS))
        if axis.kind in VALUE_KINDS:
            _check_value_axis(axis, where)
        else:
            _check_range_axis(axis, where)
    except ConfigError as error:
        raise naming_axis(error, axis.key) from None


def _check_value_axis(axis: Axis, where: str) -> None:
    if not isinstance(axis.values, tuple) or not axis.values:
        raise ConfigError(f"{where}.values", axis.values, f"a non-empty list of {axis.key} values")
    if axis.low is not None or axis.high is not None:
        raise ConfigError(f"{where}.low", axis.low, f"null for a {axis.kind} axis (use values)")
    for i, value in enumerate(axis.values):
        if value in axis.values[:i]:
            raise ConfigError(f"{where}.values", list(axis.values), "distinct values")
    if axis.key == PRESET_KEY:
        for value in axis.values:
            if value not in TRIAL_PRESETS:
                raise ConfigError(
                    f"{where}.values", value, "trial preset names: " + ", ".join(TRIAL_PRESETS)
                )


def _check_range_axis(axis: Axis, where: str) -> None:
    if axis.key == PRESET_KEY:
        raise ConfigError(f"{where}.kind", axis.kind, "grid or choice for the preset axis")
    if axis.values:
        raise ConfigError(f"{where}.values", axis.values, f"empty for a {axis.kind} axis")
    for name in ("low", "high"):
        value = getattr(axis, name)
        if not is_number(value):
            raise ConfigError(f"{where}.{name}", value, "a finite number")
    if axis.kind == "loguniform" and axis.low <= 0:  # type: ignore[operator]
        raise ConfigError(f"{where}.low", axis.low, "a number > 0 for a loguniform axis")
    if axis.low >= axis.high:  # type: ignore[operator]
        raise ConfigError(f"{where}.low", axis.low, f"a number < high={axis.high}")
