"""Cost plan of a sweep before it runs: trials, steps, parameters, tokens and training FLOPs.

Parameters are counted on the ``meta`` device (``build_model(..., device="meta")``), so planning
the 12.9B model of C.5 allocates nothing. Training compute uses the usual estimate
FLOPs ≈ 6·N·D (forward + backward, N parameters including embeddings, D training tokens; for the
image classifiers, D counts images, and a CNN's N is its forward multiply-adds per image, its
kernels being reused at every position: each trial family says which unit it trains on, how many
per step, which vocabulary it will read and how many multiply-adds one unit costs). Random axes
are not sampled: each planned trial uses its grid point's values (the base value for a randomly
swept field), which is exact unless a random axis changes steps, batch size or the model.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from signlock.search_spaces.axes import PRESET_KEY
from signlock.search_spaces.memory import (
    MemoryEstimate,
    estimate_memory,
    format_bytes,
    format_estimate,
    model_key,
)
from signlock.search_spaces.spec import SweepSpec
from signlock.trainables.config import ModelConfig, TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.families import family_of
from signlock.trainables.families.gpt import scale_name
from signlock.trainables.models import build_model, count_parameters

FLOPS_PER_PARAM_TOKEN = 6  # forward (2) + backward (4) FLOPs per multiply-add and token


@dataclass(frozen=True)
class TrialPlan:
    """One planned trial (one grid point; ``num_samples`` draws share it)."""

    name: str
    model: str  # a label of the architecture (the trial preset for a ``preset`` point)
    params: int
    steps: int
    tokens_per_step: int  # images per step for the image classifiers
    tokens: int
    flops: float
    memory: MemoryEstimate


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will cost. Per-trial lists follow ``SweepSpec.grid_overrides`` order, each
    grid point repeated ``num_samples`` times (for Optuna: the base, ``budget`` times)."""

    name: str
    search: str
    n_trials: int
    trials: tuple[TrialPlan, ...]
    params: dict[str, int]  # model label -> parameter count
    memory: dict[str, MemoryEstimate]  # model label -> predicted peak memory of one trial
    unit: str  # "tokens" (language models) or "samples" (image classifiers)
    family: str  # the base's trial family: its name and title
    objective: str  # the training loss, in words
    cpus_per_trial: float
    gpus_per_trial: float
    workers_per_trial: int
    seeds: tuple[int, ...]
    num_samples: int
    n_duplicates: int  # override sets dropped: they repeat an earlier trial config

    @property
    def steps_per_trial(self) -> tuple[int, ...]:
        return tuple(t.steps for t in self.trials)

    @property
    def total_steps(self) -> int:
        return sum(t.steps for t in self.trials)

    @property
    def tokens_per_step(self) -> tuple[int, ...]:
        return tuple(t.tokens_per_step for t in self.trials)

    @property
    def total_tokens(self) -> int:
        return sum(t.tokens for t in self.trials)

    @property
    def total_flops(self) -> float:
        return sum(t.flops for t in self.trials)


def vocab_size(cfg: TrialConfig) -> int | None:
    """The vocabulary the trainer will take from the dataset (None for image classifiers)."""
    return family_of(cfg).vocab_size(cfg)


@functools.lru_cache(maxsize=64)
def _count_params(model_json: str, vocab: int | None) -> int:
    model_cfg = ModelConfig(**json.loads(model_json))
    return count_parameters(build_model(model_cfg, vocab_size=vocab, device="meta"))


def model_parameters(cfg: TrialConfig) -> int:
    """Parameters of ``cfg``'s model, counted on the meta device (no memory)."""
    model_json = json.dumps(cfg.to_dict()["model"], sort_keys=True)
    return _count_params(model_json, vocab_size(cfg))


def tokens_per_step(cfg: TrialConfig) -> int:
    """Training units per optimizer step: tokens (batch × sequence length; the synthetic corpus
    uses its whole rows of ``synthetic_seq_len`` tokens), or images for image classifiers."""
    return family_of(cfg).units_per_step(cfg)


def model_label(cfg: TrialConfig, preset: str | None = None) -> str:
    """A short label of the architecture, e.g. ``gpt d128 L2 h4 ff256 V65``, prefixed by the
    trial preset (``preset`` point) or scale-family name when there is one."""
    label = family_of(cfg).label(cfg)
    name = preset or scale_name(cfg.model)
    return f"{name} ({label})" if name else label


@functools.lru_cache(maxsize=256)
def _memory(key: str, cfg_json: str) -> MemoryEstimate:
    cfg = TrialConfig.from_json(cfg_json)
    return estimate_memory(cfg, vocab_size(cfg))


def trial_memory(cfg: TrialConfig) -> MemoryEstimate:
    """Predicted peak memory of ``cfg`` (shared by every trial with the same model and batch)."""
    return _memory(model_key(cfg), cfg.to_json())


def plan_trial(spec: SweepSpec, overrides: dict[str, object]) -> TrialPlan:
    """The plan of the trial ``spec.trial_config(overrides)``."""
    cfg = spec.trial_config(overrides)
    params = model_parameters(cfg)
    per_step = tokens_per_step(cfg)
    tokens = per_step * cfg.steps
    return TrialPlan(
        name=cfg.name,
        model=model_label(cfg, overrides.get(PRESET_KEY)),  # type: ignore[arg-type]
        params=params,
        steps=cfg.steps,
        tokens_per_step=per_step,
        tokens=tokens,
        flops=float(FLOPS_PER_PARAM_TOKEN) * family_of(cfg).forward_macs(cfg, params) * tokens,
        memory=trial_memory(cfg),
    )


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """Trials, steps, parameters per model, tokens and FLOPs of ``spec`` (nothing allocated)."""
    if spec.search == "optuna":
        first = spec.grid_overrides()[0]
        trials = tuple(
            plan_trial(spec, {**first, "name": f"{spec.name}-{i:04d}"})
            for i in range(spec.n_trials())
        )
    else:
        trials = tuple(
            plan
            for overrides in spec.grid_overrides()
            for plan in [plan_trial(spec, overrides)] * spec.num_samples
        )
    params = {t.model: t.params for t in trials}
    memory = {t.model: t.memory for t in trials}
    return SweepPlan(
        name=spec.name,
        search=spec.search,
        n_trials=spec.n_trials(),
        trials=trials,
        params=params,
        memory=memory,
        unit=family_of(spec.base).unit,
        family=f"{family_of(spec.base).name}, {family_of(spec.base).title}",
        objective=family_of(spec.base).objective,
        cpus_per_trial=spec.cpus_per_trial,
        gpus_per_trial=spec.gpus_per_trial,
        workers_per_trial=spec.workers_per_trial,
        seeds=spec.seeds,
        num_samples=spec.num_samples,
        n_duplicates=spec.n_duplicates(),
    )


def _count(n: float) -> str:
    """Plain with thousands separators below 10^7, ``5.31e+09`` style above."""
    return f"{n:,.0f}" if n < 1e7 else f"{n:.3g}"


def _params(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3f}{suffix}"
    return str(n)


def _span(values: tuple[int, ...]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return _count(low) if low == high else f"{_count(low)}-{_count(high)}"


def format_plan(plan: SweepPlan) -> str:
    """Human-readable, multi-line summary (``signlock plan``)."""
    how = (
        f"Optuna budget {plan.n_trials}"
        if plan.search == "optuna"
        else f"{plan.n_trials // plan.num_samples} grid points × {plan.num_samples} samples"
    )
    lines = [
        f"sweep {plan.name}: {plan.n_trials} trials ({plan.search} search; {how})",
        f"  seeds: {', '.join(map(str, plan.seeds))}",
        f"  duplicates dropped: {plan.n_duplicates} (points repeating an earlier trial config)",
        f"  steps per trial: {_span(plan.steps_per_trial)} (total {_count(plan.total_steps)})",
        f"  trial family: {plan.family}; objective: {plan.objective}, per {plan.unit[:-1]}",
        f"  {plan.unit} per step: {_span(plan.tokens_per_step)}",
        f"  total training {plan.unit}: {_count(plan.total_tokens)}",
        f"  training FLOPs ≈ 6·N·{plan.unit}: {plan.total_flops:.3g}",
        f"  resources per trial: {plan.cpus_per_trial:g} CPU, {plan.gpus_per_trial:g} GPU"
        + (
            f", on each of {plan.workers_per_trial} FSDP workers"
            if plan.workers_per_trial > 1
            else ""
        ),
        f"  models ({len(plan.params)}):",
    ]
    for label, params in plan.params.items():
        n = sum(1 for t in plan.trials if t.model == label)
        trials = "trial" if n == 1 else "trials"
        lines.append(f"    {label}: {_params(params)} params ({params:,}), {n} {trials}")
    lines.append("  memory per trial (predicted peak; `--gpu-memory` checks a GPU size):")
    for label, estimate in plan.memory.items():
        lines += format_estimate(label, estimate, plan.workers_per_trial)
    return "\n".join(lines)


def check_gpu_memory(plan: SweepPlan, gpu_bytes: int, flag: str = "--gpu-memory") -> None:
    """Refuse a sweep with a trial whose predicted peak does not fit the GPU it will get."""
    workers = plan.workers_per_trial
    on_each = f" on each of {workers} workers" if workers > 1 else ""
    for label, estimate in plan.memory.items():
        if not estimate.fits(gpu_bytes, workers):
            fitting = estimate.fitting_gpus(workers)
            peak = format_bytes(estimate.per_device_peak(workers))
            raise ConfigError(
                flag,
                format_bytes(gpu_bytes),
                f"a GPU holding {label}'s predicted peak of {peak}{on_each} "
                f"(trials may use 90% of it); it fits "
                + (", ".join(f"{gb} GB" for gb in fitting) or "no common GPU")
                + _more_workers_hint(estimate, gpu_bytes, workers),
            )


def _more_workers_hint(estimate: MemoryEstimate, gpu_bytes: int, workers: int) -> str:
    needed = estimate.workers_needed(gpu_bytes // 2**30)
    if needed is None or needed <= workers:
        return ""
    return f", or this GPU with --workers-per-trial {needed}"
