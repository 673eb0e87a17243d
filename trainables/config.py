"""Typed trial configuration: nested kw-only dataclasses that round-trip through JSON exactly.

Defaults are the paper's (Appendix C.4 for TinyCharLM, C.4.2 for the tracker, Section 4 for the
interventions). Every value is checked in ``__post_init__``; a bad value raises ``ConfigError``
naming the field, the value and what is allowed.

The model section belongs to a trial family (:mod:`signlock.trainables.families`):
:class:`ModelConfig` holds the fields every family shares and ``model.kind`` picks the family's
own config class, which adds the rest (``ModelConfig(kind="mlp", ...)`` builds an ``MLPConfig``).
A family's datasets are the ones ``data.dataset`` may name with it. A ``config.json`` written by
the flat model record of earlier versions (every family's fields in one mapping) still loads: the
fields foreign to its family are dropped when they hold the flat record's defaults.

This module owns the schema: :func:`field_hint` (the type of a dotted field), :func:`coerce_field`
(the one conversion of user input — ``--set`` values, YAML specs, JSON/YAML config files — to a
field's type; PyYAML reads ``1e-3`` as a string, so numeric strings become floats here) and
:func:`read_mapping_file` (the one loader of JSON/YAML files, duplicate keys refused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from signlock.trainables.errors import ConfigError
from signlock.trainables.files import check_name

ScheduleKind = Literal["constant", "cosine", "exponential", "inverse"]
FactorDist = Literal["normal", "uniform"]
DType = Literal["float32", "bfloat16"]
Device = Literal["auto", "cpu", "cuda"]

DEFAULT_FAMILY = "gpt"  # model.kind when a config does not name one (TinyCharLM, C.4)
DEFAULT_DATASET = "tinyshakespeare"
MIN_GAP_MASS = 1e-6  # below this Gaussian tail mass the truncated law of gap init is degenerate
MAX_C_GAP = 4.8916  # a/σ with erfc(a/(σ√2)) = MIN_GAP_MASS
# The flat model record every config.json held before the families split it, with its defaults.
LEGACY_FLAT_MODEL: dict[str, Any] = {
    "kind": "gpt",
    "d_model": 128,
    "n_layers": 2,
    "n_heads": 4,
    "d_ff": 256,
    "context_length": 256,
    "pos_init": "normal",
    "linear_bias": True,
    "hidden_sizes": [256, 256],
    "sigma_init": 0.02,
    "dtype": "float32",
    "gradient_checkpointing": False,
}


def _require(ok: bool, field_name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(field_name, value, allowed)


def _families() -> types.ModuleType:
    """The family registry, imported on first use: every family module imports this one."""
    from signlock.trainables import families

    return families


def model_config_class(kind: object) -> type[ModelConfig]:
    """The model config class of family ``kind``; ``ConfigError`` naming ``model.kind`` else."""
    registry = _families().FAMILIES
    _require(
        isinstance(kind, str) and kind in registry,
        "model.kind",
        kind,
        "one of " + ", ".join(map(repr, registry)),
    )
    return registry[kind].config_class


def dataset_names() -> tuple[str, ...]:
    """Every dataset some family trains on, in registration order."""
    return _families().dataset_names()


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture: the fields every trial family shares. ``kind`` names the family
    (:data:`signlock.trainables.families.FAMILIES`), whose config class adds its own fields;
    ``ModelConfig(kind=K, **fields)`` builds family K's config (``ModelConfig()`` is TinyCharLM,
    C.4.1). ``vocab_size`` is taken from the dataset."""

    kind: str = DEFAULT_FAMILY
    sigma_init: float = 0.02
    dtype: DType = "float32"  # C.5 stores weights in bf16, LayerNorm stays fp32
    gradient_checkpointing: bool = False

    def __new__(cls, **fields: Any) -> ModelConfig:
        if cls is ModelConfig:
            cls = model_config_class(fields.get("kind", DEFAULT_FAMILY))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        _require(
            model_config_class(self.kind) is type(self),
            "model.kind",
            self.kind,
            f"the family of {type(self).__name__}",
        )
        _require(self.sigma_init > 0, "model.sigma_init", self.sigma_init, "a number > 0")

    def shared_fields(self) -> dict[str, Any]:
        """The fields every family has (what a change of ``model.kind`` keeps)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}


@dataclass(kw_only=True)
class DataConfig:
    """Dataset and batching. ``dataset`` is one of the trial families' datasets; ``path`` points
    at a local copy (text file or ``mnist.npz``); without it the dataset is downloaded into
    ``cache_dir`` and checked by SHA-256. ``synthetic`` needs neither and runs offline, as any
    family's generated dataset does."""

    dataset: str = DEFAULT_DATASET  # one of a family's datasets (dataset_names())
    path: str | None = None
    cache_dir: str | None = None  # default: $SIGNLOCK_CACHE or ~/.cache/signlock
    seq_len: int = 64
    batch_size: int = 64
    eval_batches: int = 20
    eval_batch_size: int | None = None  # default: batch_size (512 for mnist, E.2)
    val_fraction: float = 0.1
    synthetic_vocab: int = 256  # C.3.6
    synthetic_seq_len: int = 128
    synthetic_sequences: int = 4096
    synthetic_seed: int = 0

    def __post_init__(self) -> None:
        known = dataset_names()
        _require(self.dataset in known, "data.dataset", self.dataset, "one of " + _quoted(known))
        for name in (
            "seq_len",
            "batch_size",
            "eval_batches",
            "synthetic_vocab",
            "synthetic_seq_len",
            "synthetic_sequences",
        ):
            value = getattr(self, name)
            _require(value >= 1, f"data.{name}", value, "an integer >= 1")
        if self.eval_batch_size is not None:
            _require(
                self.eval_batch_size >= 1,
                "data.eval_batch_size",
                self.eval_batch_size,
                "an integer >= 1 or null",
            )
        _require(
            0 < self.val_fraction < 1, "data.val_fraction", self.val_fraction, "a number in (0, 1)"
        )
        _require(
            self.dataset != "text-file" or self.path is not None,
            "data.path",
            self.path,
            "a file path when data.dataset='text-file'",
        )


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW (C.4, C.5). ``eight_bit`` uses bitsandbytes' AdamW8bit when it and CUDA are present."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = None  # C.5 clips the global norm at 1.0
    eight_bit: bool = False

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", self.lr, "a number > 0")
        _require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a number >= 0")
        _require(0 <= self.beta1 < 1, "optim.beta1", self.beta1, "a number in [0, 1)")
        _require(0 <= self.beta2 < 1, "optim.beta2", self.beta2, "a number in [0, 1)")
        _require(self.eps > 0, "optim.eps", self.eps, "a number > 0")
        _require(
            self.grad_clip is None or self.grad_clip > 0,
            "optim.grad_clip",
            self.grad_clip,
            "a number > 0 or null",
        )


@dataclass(kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule of D.4.5: constant, or linear warmup then cosine, exponential (γ) or
    inverse (p) decay."""

    kind: ScheduleKind = "constant"
    warmup_steps: int = 0
    gamma: float = 0.999  # exponential: η = η_max γ^k after warmup
    power: float = 0.5  # inverse: η = η_max (1 + k)^(-p) after warmup

    def __post_init__(self) -> None:
        _require(
            self.warmup_steps >= 0, "schedule.warmup_steps", self.warmup_steps, "an integer >= 0"
        )
        _require(0 < self.gamma < 1, "schedule.gamma", self.gamma, "a number in (0, 1)")
        _require(self.power > 0, "schedule.power", self.power, "a number > 0")


@dataclass(kw_only=True)
class InitConfig:
    """Initialisation interventions (Section 4, E.3.1–E.3.2).

    ``a_init`` (absolute) or ``c_gap`` (so that a_init = c_gap·σ_init) turns on gap initialisation;
    ``template_rank`` turns on the low-rank sign template T = sign(G Hᵀ). ``targets`` selects
    parameters by exact name; empty means every matrix-shaped parameter (dim >= 2)."""

    a_init: float | None = None
    c_gap: float | None = None
    template_rank: int | None = None
    template_dist: FactorDist = "normal"
    template_seed: int = 1234
    targets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(
            self.a_init is None or self.a_init >= 0,
            "init.a_init",
            self.a_init,
            "a number >= 0 or null",
        )
        _require(
            self.c_gap is None or self.c_gap >= 0, "init.c_gap", self.c_gap, "a number >= 0 or null"
        )
        _require(
            self.a_init is None or self.c_gap is None,
            "init.c_gap",
            self.c_gap,
            "null when init.a_init is given (set one of a_init, c_gap)",
        )
        _require(
            self.template_rank is None or self.template_rank >= 1,
            "init.template_rank",
            self.template_rank,
            "an integer >= 1 or null",
        )

    def gap_threshold(self, sigma_init: float) -> float:
        """a_init in absolute units (0 when gap initialisation is off)."""
        if self.a_init is not None:
            return self.a_init
        if self.c_gap is not None:
            return self.c_gap * sigma_init
        return 0.0


@dataclass(kw_only=True)
class RegularizerConfig:
    """Training-time interventions: the log-barrier of Section 4 (weight ``lam``, constant for
    ``hold_fraction`` of training then linearly decayed to 0, C.4.1), the hard projection of E.3.2
    and the inward ℓ1 attraction of D.6.2 (``lam_float``, ``rho_f``). The barrier's a_init is the
    initialisation's gap threshold."""

    lam: float = 0.0
    eps_lb: float = 1e-6  # the paper leaves ε_lb unspecified; any small stabiliser
    hold_fraction: float = 0.5
    projection: bool = False
    lam_float: float = 0.0
    rho_f: float = 1e-2
    targets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.lam >= 0, "regularizer.lam", self.lam, "a number >= 0")
        _require(self.eps_lb > 0, "regularizer.eps_lb", self.eps_lb, "a number > 0")
        _require(
            0 <= self.hold_fraction <= 1,
            "regularizer.hold_fraction",
            self.hold_fraction,
            "a number in [0, 1]",
        )
        _require(self.lam_float >= 0, "regularizer.lam_float", self.lam_float, "a number >= 0")
        _require(self.rho_f > 0, "regularizer.rho_f", self.rho_f, "a number > 0")


@dataclass(kw_only=True)
class TrackerConfig:
    """Online sign tracker (Sections 2.1, 3; C.4.2 defaults ρ=1e-3, ε=1e-4). ``sample_per_tensor``
    tracks a fixed-seed random subset of coordinates per tensor (C.5 uses 2048)."""

    enabled: bool = True
    rho: float = 1e-3
    eps: float = 1e-4
    sample_per_tensor: int | None = None
    sample_seed: int = 0
    targets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.eps > 0, "tracker.eps", self.eps, "a number > 0")
        _require(
            self.rho > self.eps,
            "tracker.rho",
            self.rho,
            f"a number > tracker.eps={self.eps} (Definition 3.1 needs ε < ρ)",
        )
        _require(
            self.sample_per_tensor is None or self.sample_per_tensor >= 1,
            "tracker.sample_per_tensor",
            self.sample_per_tensor,
            "an integer >= 1 or null",
        )


@dataclass(kw_only=True)
class TrialConfig:
    """Everything one training run needs; a run directory's ``config.json`` is this, serialised."""

    name: str = "trial"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    init: InitConfig = field(default_factory=InitConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    steps: int = 2000
    seed: int = 0
    log_every: int = 50
    eval_every: int | None = None  # default: log_every
    checkpoint_every: int | None = None  # None: only the final checkpoint
    device: Device = "auto"
    threads: int | None = None  # torch intra-op threads on CPU; None leaves torch's default

    def __post_init__(self) -> None:
        check_name("name", self.name)
        _require(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        _require(self.log_every >= 1, "log_every", self.log_every, "an integer >= 1")
        _require(
            self.eval_every is None or self.eval_every >= 1,
            "eval_every",
            self.eval_every,
            "an integer >= 1 or null",
        )
        _require(
            self.checkpoint_every is None or self.checkpoint_every >= 1,
            "checkpoint_every",
            self.checkpoint_every,
            "an integer >= 1 or null",
        )
        _require(
            self.threads is None or self.threads >= 1,
            "threads",
            self.threads,
            "an integer >= 1 or null",
        )
        # Evaluations happen on logged rows only: any other interval would silently skip some.
        _require(
            self.eval_every is None or self.eval_every % self.log_every == 0,
            "eval_every",
            self.eval_every,
            f"a multiple of log_every={self.log_every} or null",
        )
        # Checkpoints are taken right after a logged row, so a resumed run repeats no window.
        _require(
            self.checkpoint_every is None or self.checkpoint_every % self.log_every == 0,
            "checkpoint_every",
            self.checkpoint_every,
            f"a multiple of log_every={self.log_every} or null",
        )
        self._check_cross_field()

    def _check_cross_field(self) -> None:
        family = _families().family_of(self)
        _require(
            self.data.dataset in family.datasets,
            "data.dataset",
            self.data.dataset,
            f"one of {_quoted(family.datasets)} when model.kind={family.name!r}",
        )
        if self.regularizer.projection:
            _require(
                self.init.template_rank is not None,
                "regularizer.projection",
                True,
                "false unless init.template_rank is set (E.3.2 projects onto the template)",
            )
        self._check_gap()
        family.check_trial(self)

    def _check_gap(self) -> None:
        sigma = self.model.sigma_init
        a_init = self.init.gap_threshold(sigma)
        gap_field = "init.c_gap" if self.init.c_gap is not None else "init.a_init"
        # Section 4: the truncated Gaussian keeps P[|Z| >= a_init] = erfc(a/(σ√2)) of the mass.
        kept_mass = math.erfc(a_init / (sigma * math.sqrt(2.0)))
        _require(
            kept_mass >= MIN_GAP_MASS,
            gap_field,
            getattr(self.init, gap_field[5:]),
            f"a gap keeping >= {MIN_GAP_MASS:g} of the N(0, σ_init²) mass, i.e. a_init <= "
            f"{MAX_C_GAP:.3f}·σ_init = {MAX_C_GAP * sigma:.4g}",
        )
        if self.regularizer.lam > 0:
            _require(
                a_init > 0,
                "regularizer.lam",
                self.regularizer.lam,
                "0 unless init.a_init or init.c_gap > 0 (the barrier's threshold is a_init)",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrialConfig:
        return _build(cls, raw, prefix="")

    @classmethod
    def from_json(cls, text: str) -> TrialConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls, path: str | Path) -> TrialConfig:
        """Load a ``.json`` or ``.yaml``/``.yml`` trial config (YAML via ``safe_load``)."""
        return cls.from_dict(read_mapping_file(path, "config"))

    def with_overrides(self, overrides: dict[str, Any]) -> TrialConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"optim.lr": 1e-3, "seed": 2}``.
        Overriding ``model.kind`` with another family starts the model section from that
        family's defaults, keeping the shared fields (``sigma_init``, ``dtype``, …); a
        ``model.FIELD`` the family does not have is refused."""
        merged = self.to_dict()
        kind = overrides.get("model.kind", self.model.kind)
        if kind != self.model.kind:
            merged["model"] = {**self.model.shared_fields(), "kind": kind}
        _check_model_fields(model_config_class(kind), overrides)
        for dotted, value in overrides.items():
            node = merged
            *parents, leaf = dotted.split(".")
            for part in parents:
                _require(
                    isinstance(node.get(part), dict),
                    dotted,
                    value,
                    "a dotted path to a trial config field",
                )
                node = node[part]
            node[leaf] = value
        return TrialConfig.from_dict(merged)


def _quoted(names: typing.Iterable[str]) -> str:
    return ", ".join(map(repr, names))


def _check_model_fields(cls: type[ModelConfig], overrides: dict[str, Any]) -> None:
    """Every dotted ``model.FIELD`` override names a field of family config ``cls``."""
    for dotted, value in overrides.items():
        section, _, leaf = dotted.partition(".")
        if section == "model" and leaf:
            _require(leaf in _field_names(cls), dotted, value, _unknown_field(cls, "model"))


def parse_float(value: object) -> float | None:
    """A number, or a string holding one (``"1e-3"``); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _unwrap_optional(hint: Any) -> Any:
    if get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return inner[0] if len(inner) == 1 else hint
    return hint


def _dotted_hint(dotted: str) -> Any:
    hint: Any = TrialConfig
    walked: list[str] = []
    for part in dotted.split("."):
        hint = _unwrap_optional(hint)
        if not dataclasses.is_dataclass(hint):
            raise KeyError(f"{'.'.join(walked)} is a value, not a section")
        hints = _section_hints(hint)
        if part not in hints:
            where = ".".join(walked) or "the top level"
            raise KeyError(f"fields in {where}: {', '.join(sorted(hints))}")
        hint = hints[part]
        walked.append(part)
    return hint


def _section_hints(section: type) -> dict[str, Any]:
    """The fields of a config section and their types; for the model section, those of every
    family (each family's build then refuses the fields it does not have)."""
    if section is ModelConfig:
        return _families().model_field_hints()
    return typing.get_type_hints(section)


def field_hint(dotted: str) -> Any:
    """The type of a dotted TrialConfig field, ``Optional`` removed (``"optim.lr"`` -> ``float``);
    raises ``KeyError`` listing the fields allowed where the path stops existing."""
    return _unwrap_optional(_dotted_hint(dotted))


def coerce_field(dotted: str, value: Any) -> Any:
    """User input for field ``dotted`` converted to the field's type as plain data (a section
    stays a mapping); raises ``ConfigError`` naming the field when it cannot be."""
    try:
        hint = _dotted_hint(dotted)
    except KeyError as missing:
        raise ConfigError(dotted, value, f"a dotted TrialConfig field; {missing.args[0]}") from None
    section = _unwrap_optional(hint)
    if dataclasses.is_dataclass(section) and isinstance(value, dict):
        return {key: coerce_field(f"{dotted}.{key}", item) for key, item in value.items()}
    return _coerce(hint, value, dotted)


def read_mapping_file(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping held by a ``.json`` or YAML file; ``what`` names it in errors (``config``,
    ``spec``). Missing files, bad syntax, duplicate keys and non-mappings are ``ConfigError``s."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(what, str(path), f"an existing .json or .yaml file (not found: {path})")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            raw = json.loads(text, object_pairs_hook=_reject_duplicate_pairs)
        else:
            _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader), what)
            raw = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(what, str(path), f"valid YAML/JSON ({_syntax_fault(error)})") from None
    _require(isinstance(raw, dict), what, str(path), "a file holding a mapping")
    return raw


def _syntax_fault(error: Exception) -> str:
    """One line saying what is wrong and where: ``json`` already gives ``line L column C``;
    PyYAML's marks are 0-based and its first line names only the context, so say it the same
    way, 1-based."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError):
        words = ", ".join(part for part in (error.context, error.problem) if part)
        mark = error.problem_mark or error.context_mark
        words = words or type(error).__name__
        return f"{words}: line {mark.line + 1} column {mark.column + 1}" if mark else words
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def _check_unique_keys(node: Any, path: str) -> None:
    """Reject duplicate mapping keys in a composed YAML node tree (PyYAML keeps the last)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(path, key, f"keys that appear once (duplicate on line {line})")
            seen.add(key)
            _check_unique_keys(value_node, f"{path}.{key}")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]")


def _reject_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        _require(key not in out, "file", key, "keys that appear once in each JSON object")
        out[key] = value
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted fields whose values differ between two ``TrialConfig.to_dict()`` forms, with the
    values, e.g. ``["optim.lr: 0.0003 -> 0.002"]``. A flat model record of an earlier version
    compares as the family config it loads as."""
    if not prefix:
        old, new = upgraded_config(old), upgraded_config(new)
    changed = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changed += config_differences(before, after, f"{prefix}{key}.")
        elif before != after:
            changed.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return changed


def upgraded_config(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a ``TrialConfig.to_dict()`` form) with a flat legacy model record replaced by
    its family's fields; anything that cannot be upgraded is returned as it is."""
    model = raw.get("model")
    if not _is_flat_record(model):
        return raw
    try:
        return {**raw, "model": _upgrade_flat_record(model, "model.")}
    except ConfigError:
        return raw


def _is_flat_record(raw: object) -> bool:
    """Whether a model mapping is the flat record of earlier versions (all of its fields)."""
    return isinstance(raw, dict) and raw.keys() == LEGACY_FLAT_MODEL.keys()


def _upgrade_flat_record(raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A flat model record reduced to its family's fields: a foreign field is dropped when it
    holds the flat record's default, else refused (it configured nothing its family has)."""
    family_fields = {f.name for f in dataclasses.fields(model_config_class(raw["kind"]))}
    for key, value in raw.items():
        _require(
            key in family_fields or value == LEGACY_FLAT_MODEL[key],
            f"{prefix}{key}",
            value,
            f"{LEGACY_FLAT_MODEL[key]!r} (its old default) in an old flat model record of "
            f"model.kind={raw['kind']!r}, which has no such field",
        )
    return {key: value for key, value in raw.items() if key in family_fields}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    _require(isinstance(raw, dict), where, raw, "a mapping")
    if cls is ModelConfig:
        cls, raw = _model_section(raw, prefix)
    hints = typing.get_type_hints(cls)
    for key in raw:
        _require(key in _field_names(cls), f"{prefix}{key}", raw[key], _unknown_field(cls, where))
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    return cls(**kwargs)


def _model_section(raw: dict[str, Any], prefix: str) -> tuple[type, dict[str, Any]]:
    """The family config class a model mapping names (``kind``) and the mapping it builds from
    (a flat legacy record upgraded)."""
    cls = model_config_class(raw.get("kind", DEFAULT_FAMILY))
    return cls, _upgrade_flat_record(raw, prefix) if _is_flat_record(raw) else raw


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _unknown_field(cls: type, where: str) -> str:
    """What a section of dataclass ``cls`` allows (a model section: its family's fields)."""
    family = ""
    if issubclass(cls, ModelConfig):
        kind = next(f.default for f in dataclasses.fields(cls) if f.name == "kind")
        family = f" of model.kind={kind!r}"
    return f"unknown field{family}; allowed in {where}: {', '.join(sorted(_field_names(cls)))}"


def _coerce(hint: Any, value: Any, field_name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{field_name}.")
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            _require(type(None) in args, field_name, value, "a value (null is not allowed)")
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, field_name)
    if origin is Literal:
        _require(value in args, field_name, value, "one of " + ", ".join(map(repr, args)))
        return value
    if origin is list:
        _require(isinstance(value, list | tuple), field_name, value, "a list")
        return [_coerce(args[0], item, field_name) for item in value]
    if hint is bool:
        _require(isinstance(value, bool), field_name, value, "true or false")
        return value
    if hint is int:
        _require(
            isinstance(value, int) and not isinstance(value, bool), field_name, value, "an integer"
        )
        return value
    if hint is float:
        number = parse_float(value)
        _require(number is not None and math.isfinite(number), field_name, value, "a finite number")
        return number
    if hint is str:
        _require(isinstance(value, str), field_name, value, "a string")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {field_name}")
