"""Sweep spec sources: a sweep preset name or a YAML/JSON spec file (module docstring of
:mod:`signlock.search_spaces.spec` for the fields), with command-line overrides applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from signlock.search_spaces.overrides import apply_overrides
from signlock.search_spaces.spec import SweepSpec
from signlock.search_spaces.sweeps import SWEEP_PRESETS, sweep_preset
from signlock.trainables.config import read_mapping_file
from signlock.trainables.errors import ConfigError, InputNotFoundError

SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def read_spec_file(path: str | Path) -> SweepSpec:
    """The validated spec of a ``.yaml``/``.yml``/``.json`` file (duplicate keys are an error)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(path)
    return SweepSpec.from_dict(read_mapping_file(path, "spec"))


def _looks_like_path(text: str) -> bool:
    return Path(text).suffix in SPEC_SUFFIXES or "/" in text or Path(text).exists()


def load_spec(preset_or_path: str, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """A sweep preset or spec file, with ``overrides`` (:func:`apply_overrides`), validated."""
    if preset_or_path in SWEEP_PRESETS:
        spec = sweep_preset(preset_or_path)
    elif _looks_like_path(preset_or_path):
        spec = read_spec_file(preset_or_path)
    else:
        raise ConfigError(
            "spec",
            preset_or_path,
            f"a sweep preset ({', '.join(SWEEP_PRESETS)}) or a YAML/JSON spec file",
        )
    return apply_overrides(spec, overrides) if overrides else spec


__all__ = ["load_spec", "read_spec_file"]
