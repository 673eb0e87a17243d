"""Sweep specifications: a typed, validated description of a set of trials.

A ``SweepSpec`` is a resolved base ``TrialConfig`` plus what varies around it. The orchestrator
turns it into trials with :meth:`SweepSpec.grid_overrides` (the explicit grid points, each a dict
of dotted overrides with a unique ``name`` and a ``seed``), :meth:`SweepSpec.random_axes` (what a
Ray Tune / Optuna searcher samples on top of each grid point) and :meth:`SweepSpec.trial_config`
(overrides -> ``TrialConfig``). Everything is validated when the spec is built, before anything
runs: a bad spec raises ``ConfigError(field, value, allowed)`` whose field is a path such as
``spec.axes[2].low`` or, for a point that does not give a valid trial, the trial field itself
(``init.a_init``, ``regularizer.lam``, ...).

YAML user spec (``load_spec("my-sweep.yaml")``; JSON with the same fields works too)::

    name: my-sweep              # [A-Za-z0-9._-]; trials are named my-sweep-0000, my-sweep-0001, ...
    base: charlm-lockin         # a trial preset name (`signlock presets`), or an inline mapping
                                #   of TrialConfig fields, e.g. {steps: 500, optim: {lr: 1.0e-3}}
    set: {steps: 500}           # optional dotted overrides applied to base (and to every "preset"
                                #   axis value); a swept key may not also be set here
    axes:                       # dotted TrialConfig field -> {KIND: ...}; order = expansion order
      init.a_init: {grid: [0.005, 0.02]}          # explicit values, crossed with the other grids
      regularizer.lam: {loguniform: [1e-4, 0.5]}  # sampled: uniform / loguniform [low, high]
      optim.lr: {choice: [1e-4, 3e-4]}            #   or choice among values
    seeds: [0, 1, 2]            # every grid point and every point below runs once per seed
    num_samples: 4              # draws of the random axes per grid point (needs a random axis)
    points:                     # extra override sets run in addition to the grid (x seeds)
      - {init.a_init: 0.0, regularizer.lam: 0.0, init.template_rank: null}
    search: grid                # grid, or optuna (then `budget` trials, random axes only)
    budget: 20                  # Optuna trials; only with search: optuna
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, workers_per_trial: 1}
    description: "..."

Semantics.

* Grid expansion: the Cartesian product of the ``grid`` axes in the order written (first axis
  slowest; no grid axis gives one point, the base itself), then ``points`` in order; each of those
  override sets is repeated for every seed (seed innermost). Trial ``i`` of that list is named
  ``f"{name}-{i:04d}"``.
* Random axes (``choice``, ``uniform``, ``loguniform``) are not expanded: ``search: grid`` draws
  them ``num_samples`` times per grid point and point (Ray Tune's ``num_samples``); a value a
  point sets explicitly wins over the sampled one (:meth:`SweepSpec.merge`), so
  ``n_trials = len(grid_overrides()) * num_samples``. ``search: optuna`` runs ``budget`` trials,
  each a configuration Optuna proposes over the random axes; it therefore takes no grid axes, no
  points, one seed and ``num_samples: 1``.
* Validation builds the ``TrialConfig`` of every grid point and point with every random axis at
  each of its extremes (``low``/``high``, every ``choice`` value), so e.g. an ``a_init`` above the
  gap limit or ``lam > 0`` without a gap fails here, naming ``init.a_init`` / ``regularizer.lam``.
* The special axis / point key ``preset`` takes trial preset names: that point starts from the
  named trial preset (then ``set``, then the point's other overrides) instead of ``base``, e.g.
  ``preset: {grid: [scale-31m, scale-1.2b]}`` crosses whole Table-1 configurations (C.5). Only
  :meth:`SweepSpec.trial_config` understands it (``base.with_overrides`` does not).
* Every trial is of the base's trial family (``model.kind``): a sweep minimises one validation
  objective over one unit of data, so a ``preset`` point of another family is refused.
* PyYAML reads ``1e-4`` (no dot) as a string; numeric strings are accepted wherever a float
  field or an axis bound is expected.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from signlock.search_spaces.axes import (
    AXIS_KINDS,
    PRESET_KEY,
    Axis,
    check_axis,
    check_key,
    is_int,
    is_number,
    plain,
)
from signlock.search_spaces.presets import TRIAL_PRESETS, trial_preset
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.families import family_of

SEARCH_KINDS = ("grid", "optuna")
MAX_VALIDATED_CORNERS = 4096  # above this many random-axis corners, vary one axis at a time
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: ``base`` (resolved trial config, from trial preset ``base_preset`` with
    ``base_overrides`` applied), the axes, seeds and extra points, and how to search and run it.
    See the module docstring for the YAML form and the expansion rules."""

    name: str
    base: TrialConfig
    base_preset: str | None
    axes: tuple[Axis, ...] = ()
    seeds: tuple[int, ...] = (0,)
    points: tuple[dict[str, Any], ...] = ()
    num_samples: int = 1
    search: str = "grid"
    budget: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1  # FSDP2 workers sharding each trial (GPUs each: gpus_per_trial)
    description: str = ""
    base_overrides: dict[str, Any] = field(default_factory=dict)  # the YAML `set`

    def __post_init__(self) -> None:
        for name, allowed in (
            ("axes", "a tuple of Axis"),
            ("seeds", "a tuple of integers >= 0"),
            ("points", "a tuple of mappings of dotted overrides"),
        ):
            if not isinstance(getattr(self, name), tuple):
                raise ConfigError(f"spec.{name}", getattr(self, name), allowed)
        for point in self.points:
            if not isinstance(point, dict):
                raise ConfigError("spec.points", point, "a tuple of mappings of dotted overrides")
        self._check_fields()
        self._check_search()
        self._check_trials()

    # -- validation ----------------------------------------------------------------------------

    def _check_fields(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigError("spec.name", self.name, "a non-empty name of [A-Za-z0-9._-]")
        if not isinstance(self.base, TrialConfig):
            raise ConfigError("spec.base", type(self.base).__name__, "a TrialConfig")
        if self.base_preset is not None and self.base_preset not in TRIAL_PRESETS:
            raise ConfigError(
                "spec.base_preset", self.base_preset, "null or one of " + ", ".join(TRIAL_PRESETS)
            )
        if not isinstance(self.description, str):
            raise ConfigError("spec.description", self.description, "a string")
        self._check_set()
        self._check_axes()
        self._check_seeds()
        self._check_points()
        self._check_resources()

    def _check_set(self) -> None:
        if not isinstance(self.base_overrides, dict):
            raise ConfigError("spec.set", self.base_overrides, "a mapping of dotted overrides")
        for key in self.base_overrides:
            check_key(key, "spec.set")
            if key == PRESET_KEY:
                raise ConfigError("spec.set", key, "TrialConfig fields (choose presets by base)")

    def _check_axes(self) -> None:
        if not isinstance(self.axes, tuple):
            raise ConfigError("spec.axes", self.axes, "a list of axes")
        for i, axis in enumerate(self.axes):
            check_axis(axis, f"spec.axes[{i}]")
            earlier = [a.key for a in self.axes[:i]]
            if axis.key in earlier:
                raise ConfigError(f"spec.axes[{i}].key", axis.key, "a key not already swept")
            if axis.key in self.base_overrides:
                raise ConfigError(
                    f"spec.set.{axis.key}",
                    self.base_overrides[axis.key],
                    f"absent: {axis.key} is swept by spec.axes[{i}]",
                )

    def _check_seeds(self) -> None:
        seeds = self.seeds
        if not isinstance(seeds, tuple) or not seeds:
            raise ConfigError("spec.seeds", seeds, "a non-empty list of integers >= 0")
        for seed in seeds:
            if not is_int(seed) or seed < 0:
                raise ConfigError("spec.seeds", list(seeds), "a non-empty list of integers >= 0")
        if len(set(seeds)) != len(seeds):
            raise ConfigError("spec.seeds", list(seeds), "distinct seeds")

    def _check_points(self) -> None:
        for j, point in enumerate(self.points):
            if not point:
                raise ConfigError(f"spec.points[{j}]", point, "a non-empty mapping of overrides")
            for key, value in point.items():
                check_key(key, f"spec.points[{j}]")
                if key == PRESET_KEY and value not in TRIAL_PRESETS:
                    raise ConfigError(
                        f"spec.points[{j}].preset", value, "one of " + ", ".join(TRIAL_PRESETS)
                    )

    def _check_resources(self) -> None:
        if not is_number(self.cpus_per_trial) or self.cpus_per_trial <= 0:
            raise ConfigError("spec.resources.cpus_per_trial", self.cpus_per_trial, "a number > 0")
        if not is_number(self.gpus_per_trial) or self.gpus_per_trial < 0:
            raise ConfigError("spec.resources.gpus_per_trial", self.gpus_per_trial, "a number >= 0")
        workers = self.workers_per_trial
        if not is_int(workers) or workers < 1:
            raise ConfigError("spec.resources.workers_per_trial", workers, "an integer >= 1")

    def _check_search(self) -> None:
        if not is_int(self.num_samples) or self.num_samples < 1:
            raise ConfigError("spec.num_samples", self.num_samples, "an integer >= 1")
        if self.search not in SEARCH_KINDS:
            raise ConfigError("spec.search", self.search, "one of " + ", ".join(SEARCH_KINDS))
        if self.search == "grid":
            self._check_grid_search()
        else:
            self._check_optuna_search()

    def _check_grid_search(self) -> None:
        if self.budget is not None:
            raise ConfigError("spec.budget", self.budget, "null unless spec.search='optuna'")
        if self.num_samples > 1 and not self.random_axes():
            raise ConfigError(
                "spec.num_samples",
                self.num_samples,
                "1 when no axis is random (repeat trials with spec.seeds)",
            )

    def _check_optuna_search(self) -> None:
        if not is_int(self.budget) or self.budget < 1:
            raise ConfigError("spec.budget", self.budget, "an integer >= 1 for search='optuna'")
        for i, axis in enumerate(self.axes):
            if not axis.is_random:
                raise ConfigError(
                    f"spec.axes[{i}].kind",
                    axis.kind,
                    "choice, uniform or loguniform when spec.search='optuna'",
                )
        if not self.axes:
            raise ConfigError("spec.axes", [], "at least one random axis for search='optuna'")
        if self.points:
            raise ConfigError("spec.points", list(self.points), "empty for search='optuna'")
        if len(self.seeds) != 1:
            raise ConfigError(
                "spec.seeds", list(self.seeds), "exactly one seed for search='optuna'"
            )
        if self.num_samples != 1:
            raise ConfigError(
                "spec.num_samples", self.num_samples, "1 for search='optuna' (use spec.budget)"
            )

    def _check_trials(self) -> None:
        """Build the TrialConfig of every grid point and point at every random-axis corner; all
        of one trial family (a sweep minimises one validation objective)."""
        seed = self.seeds[0]
        family = family_of(self.base)
        for overrides in self._override_sets():
            for corner in self._random_corners():
                point = {**self.merge(overrides, corner), "seed": seed}
                try:
                    kind = self.trial_config(point).model.kind
                    if kind != family.name:
                        allowed = f"{family.name!r}, the trial family of the sweep's base"
                        raise ConfigError("model.kind", kind, allowed)
                except ConfigError as error:
                    shown = {k: v for k, v in point.items() if k != "seed"}
                    raise ConfigError(
                        error.field, error.value, f"{error.allowed} (in sweep point {shown})"
                    ) from None

    def _random_corners(self) -> list[dict[str, Any]]:
        axes = self.random_axes()
        n_corners = math.prod(len(a.corners()) for a in axes)
        if n_corners <= MAX_VALIDATED_CORNERS:
            return [
                dict(zip([a.key for a in axes], combo, strict=True))
                for combo in itertools.product(*(a.corners() for a in axes))
            ]
        first = {a.key: a.corners()[0] for a in axes}
        return [{**first, a.key: value} for a in axes for value in a.corners()]

    # -- expansion ----------------------------------------------------------------------------

    def grid_axes(self) -> tuple[Axis, ...]:
        """The axes expanded into explicit grid points."""
        return tuple(a for a in self.axes if not a.is_random)

    def random_axes(self) -> tuple[Axis, ...]:
        """The axes a searcher samples (uniform, loguniform, choice), in spec order."""
        return tuple(a for a in self.axes if a.is_random)

    def _override_sets(self) -> list[dict[str, Any]]:
        grid = self.grid_axes()
        keys = [a.key for a in grid]
        combos = itertools.product(*(a.values for a in grid))
        sets = [dict(zip(keys, combo, strict=True)) for combo in combos]
        return sets + [dict(p) for p in self.points]

    @cached_property
    def _distinct_override_sets(self) -> tuple[dict[str, Any], ...]:
        """The override sets whose trial configs differ, first occurrence kept: a point that
        repeats a grid combination (e.g. the base preset's own values) would run the same trial
        twice. Sets overriding different random axes are distinct (different sampling)."""
        random_keys = {axis.key for axis in self.random_axes()}
        kept: list[dict[str, Any]] = []
        seen: set[tuple[str, frozenset[str]]] = set()
        for overrides in self._override_sets():
            config = self.trial_config({**overrides, "seed": self.seeds[0]}).to_dict()
            del config["name"]
            sampled_here = frozenset(random_keys & overrides.keys())
            identity = (json.dumps(config, sort_keys=True), sampled_here)
            if identity not in seen:
                seen.add(identity)
                kept.append(overrides)
        return tuple(kept)

    def varied_keys(self) -> tuple[str, ...]:
        """Every field the sweep varies between trials: its axes, its points' fields and the
        seed (not the trials' names), in that order."""
        keys = [axis.key for axis in self.axes] + [k for point in self.points for k in point]
        return tuple(k for k in dict.fromkeys([*keys, "seed"]) if k != "name")

    def n_duplicates(self) -> int:
        """Override sets dropped because an earlier one gives the same trial config."""
        return len(self._override_sets()) - len(self._distinct_override_sets)

    def grid_overrides(self) -> list[dict[str, Any]]:
        """Every distinct grid combination, then every distinct point, each once per seed (seed
        innermost); each dict holds ``name`` (``f"{spec.name}-{i:04d}"``), ``seed`` and the
        dotted overrides."""
        out: list[dict[str, Any]] = []
        for overrides in self._distinct_override_sets:
            for seed in self.seeds:
                out.append({"name": f"{self.name}-{len(out):04d}", "seed": seed, **overrides})
        return out

    def n_grid_points(self) -> int:
        """``len(grid_overrides())`` without expanding it."""
        return len(self._distinct_override_sets) * len(self.seeds)

    def n_trials(self) -> int:
        """Trials the sweep runs: grid points x ``num_samples``, or ``budget`` for Optuna."""
        if self.search == "optuna":
            return int(self.budget)  # type: ignore[arg-type]
        return self.n_grid_points() * self.num_samples

    def merge(self, overrides: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
        """The overrides of one trial: the searcher's ``sampled`` random-axis values, then the
        grid point's explicit ``overrides``, which win (a point such as the baseline keeps the
        values it sets even when the same key is a random axis)."""
        return {**sampled, **overrides}

    def trial_config(self, overrides: dict[str, Any]) -> TrialConfig:
        """``base.with_overrides(overrides)``; a ``preset`` key starts from that trial preset
        (with ``set`` re-applied) instead. Errors are ``ConfigError`` naming the field."""
        overrides = dict(overrides)
        preset = overrides.pop(PRESET_KEY, None)
        try:
            if preset is None:
                return self.base.with_overrides(overrides)
            return trial_preset(preset).with_overrides({**self.base_overrides, **overrides})
        except (TypeError, KeyError, AttributeError) as error:
            allowed = f"dotted TrialConfig overrides ({error})"
            raise ConfigError("overrides", overrides, allowed) from None

    # -- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able YAML form; ``SweepSpec.from_dict(spec.to_dict()) == spec``. ``base`` is
        written inline (resolved) with ``base_preset`` kept as provenance; re-applying ``set``
        to the resolved base is a no-op."""
        return {
            "name": self.name,
            "description": self.description,
            "base": self.base.to_dict(),
            "base_preset": self.base_preset,
            "set": plain(dict(self.base_overrides)),
            "axes": {axis.key: axis.to_dict() for axis in self.axes},
            "seeds": list(self.seeds),
            "num_samples": self.num_samples,
            "points": [plain(dict(p)) for p in self.points],
            "search": self.search,
            "budget": self.budget,
            "resources": {
                "cpus_per_trial": self.cpus_per_trial,
                "gpus_per_trial": self.gpus_per_trial,
                "workers_per_trial": self.workers_per_trial,
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: object) -> SweepSpec:
        """Parse and validate the YAML user form (module docstring; :mod:`.spec_parsing`)."""
        from signlock.search_spaces.spec_parsing import parse_spec

        return parse_spec(data)


__all__ = ["AXIS_KINDS", "SEARCH_KINDS", "Axis", "SweepSpec"]
