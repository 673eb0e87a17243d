"""Sign lock-in interventions: gap initialisation and the low-rank sign template (Section 4, E.3.1,
E.3.2), the log-barrier (Section 4), the hard projection (E.3.2) and the inward ℓ1 attraction of
the sign-floating regime (D.6.2).

Formulas are plain functions of tensors; ``Interventions`` applies them to a model's target
parameters as a trial configures them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from signlock.trainables.config import MIN_GAP_MASS, TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.schedules import barrier_weight


def gap_tail_mass(a_init: float, sigma_init: float) -> float:
    """P[|Z| >= a_init] for Z ~ N(0, σ_init²): the mass gap initialisation keeps (Section 4)."""
    return math.erfc(a_init / (sigma_init * math.sqrt(2.0)))


def max_gap_threshold(sigma_init: float) -> float:
    """The largest a_init whose tail mass is at least ``MIN_GAP_MASS``."""
    return -sigma_init * _ndtri(MIN_GAP_MASS / 2.0)


def _ndtri(p: float) -> float:
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def sample_gap_magnitudes(
    shape: torch.Size | tuple[int, ...],
    sigma_init: float,
    a_init: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """|Z| for Z ~ N(0, σ²) conditioned on |Z| >= a (Section 4), sampled exactly by inverting the
    tail: P[|Z| > x] = 2Φ(-x/σ), so x = -σ Φ⁻¹(u·P[|Z| >= a]/2) with u ~ U(0, 1]. No rejection
    loop, so the cost does not grow with a. Returns float64 on the CPU."""
    mass = gap_tail_mass(a_init, sigma_init)
    if mass < MIN_GAP_MASS:
        raise ConfigError(
            "init.a_init",
            a_init,
            f"<= {max_gap_threshold(sigma_init):.4g} for σ_init={sigma_init} "
            f"(beyond it less than {MIN_GAP_MASS:g} of the Gaussian mass remains)",
        )
    u = 1.0 - torch.rand(shape, generator=generator, dtype=torch.float64)  # (0, 1]
    return -sigma_init * torch.special.ndtri(u * (mass / 2.0))


def random_signs(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """i.i.d. Rademacher ±1 (float64, CPU)."""
    bits = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64)
    return (2 * bits - 1).to(torch.float64)


def sign_template(
    shape: torch.Size | tuple[int, ...], rank: int, dist: str, generator: torch.Generator
) -> torch.Tensor:
    """T = sign(G Hᵀ) with G ∈ R^{m×r}, H ∈ R^{n×r} i.i.d. N(0,1) or Unif[-1,1] (Section 4, E.3.1
    Eq. 21), sign(0) = +1. Tensors of more than two dims are viewed as (shape[0], rest).
    Returns int8 ±1 of ``shape`` on the CPU."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    factors = []
    for n in (rows, cols):
        if dist == "uniform":
            factors.append(torch.rand(n, rank, generator=generator, dtype=torch.float64) * 2 - 1)
        else:
            factors.append(torch.randn(n, rank, generator=generator, dtype=torch.float64))
    return template_from_factors(*factors).reshape(shape)


def template_from_factors(g_factor: torch.Tensor, h_factor: torch.Tensor) -> torch.Tensor:
    """sign(G Hᵀ) as int8 ±1 with sign(0) = +1 (Section 4)."""
    product = g_factor @ h_factor.T  # (m, n)
    return torch.where(product >= 0, 1, -1).to(torch.int8)


def log_barrier_terms(weight: torch.Tensor, a_init: float, eps_lb: float) -> torch.Tensor:
    """log max{1, a/(|W_ij| + ε_lb)} per entry (Section 4), in fp32."""
    ratio = a_init / (weight.float().abs() + eps_lb)
    return torch.log(torch.clamp_min(ratio, 1.0))


def log_barrier(weight: torch.Tensor, a_init: float, eps_lb: float) -> torch.Tensor:
    """R_LB(W; a, ε_lb) = (1/mn) Σ log max{1, a/(|W_ij| + ε_lb)} (Section 4), computed in fp32."""
    return log_barrier_terms(weight, a_init, eps_lb).mean()


def inward_l1_terms(weight: torch.Tensor, rho_f: float) -> torch.Tensor:
    """min{|W_ij|, ρ_f} per entry (D.6.2), in fp32."""
    return torch.clamp_max(weight.float().abs(), rho_f)


def inward_l1(weight: torch.Tensor, rho_f: float) -> torch.Tensor:
    """R_ID(W; ρ_f) = (1/mn) Σ min{|W_ij|, ρ_f} (D.6.2), computed in fp32."""
    return inward_l1_terms(weight, rho_f).mean()


@torch.no_grad()
def project_to_template_(weight: torch.Tensor, template: torch.Tensor) -> int:
    """Π_hard(W)_ij = T_ij |W_ij| in place (E.3.2 Eq. 22); returns how many entries it changed
    (those whose sign disagreed with the template; exact zeros are left as they are)."""
    disagreeing = (weight * template) < 0
    changed = int(disagreeing.sum())
    if changed:
        weight.copy_(weight.abs() * template)
    return changed


def resolve_targets(
    model: nn.Module, names: list[str], field_name: str
) -> list[tuple[str, nn.Parameter]]:
    """The named parameters an intervention acts on: ``names`` if given, else every parameter with
    dim >= 2 (the paper's "matrix-shaped parameters", C.4.1)."""
    matrices = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    if not names:
        return matrices
    by_name = dict(matrices)
    for name in names:
        if name not in by_name:
            raise ConfigError(
                field_name, name, "names of matrix-shaped parameters: " + ", ".join(by_name)
            )
    return [(name, by_name[name]) for name in names]


class Interventions:
    """The interventions one trial uses, bound to its model's parameters."""

    def __init__(self, cfg: TrialConfig, model: nn.Module) -> None:
        self.cfg = cfg
        self.sigma_init = cfg.model.sigma_init
        self.a_init = cfg.init.gap_threshold(self.sigma_init)
        self.init_targets = resolve_targets(model, cfg.init.targets, "init.targets")
        self.reg_targets = resolve_targets(model, cfg.regularizer.targets, "regularizer.targets")
        self.templates = self._make_templates()

    def _make_templates(self) -> dict[str, torch.Tensor]:
        rank = self.cfg.init.template_rank
        if rank is None:
            return {}
        # One generator with the fixed global seed (C.4.1: seed 1234) walks the targets in order,
        # so every trial of a sweep shares the same templates, whatever its own seed.
        generator = torch.Generator().manual_seed(self.cfg.init.template_seed)
        return {
            name: sign_template(param.shape, rank, self.cfg.init.template_dist, generator).to(
                param.device
            )
            for name, param in self.init_targets
        }

    @property
    def changes_init(self) -> bool:
        return self.a_init > 0 or bool(self.templates)

    @torch.no_grad()
    def initialize(self, seed: int) -> None:
        """Overwrite the target weights: gap init Z (Section 4) with random signs, or with the
        template's signs W₀ = T ⊙ |Z| (E.3.2). Without a gap, |Z| is half-normal."""
        if not self.changes_init:
            return
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.init_targets:
            magnitudes = sample_gap_magnitudes(param.shape, self.sigma_init, self.a_init, generator)
            if name in self.templates:
                signs = self.templates[name].to(torch.float64).cpu()
            else:
                signs = random_signs(param.shape, generator)
            param.copy_((signs * magnitudes).to(dtype=param.dtype, device=param.device))

    def penalty(self, step: int) -> tuple[torch.Tensor | None, float]:
        """λ(t) Σ_l R_LB(W_l) + λ_float Σ_l R_ID(W_l) over the regularised layers (Section 4,
        D.6.2), and λ(t). Returns (None, λ(t)) when both weights are zero at this step."""
        reg = self.cfg.regularizer
        lam_t = barrier_weight(step, self.cfg.steps, reg.lam, reg.hold_fraction)
        terms: list[torch.Tensor] = []
        if lam_t > 0 and self.a_init > 0:
            barrier = sum(
                self._layer_mean(log_barrier_terms(self._values(p), self.a_init, reg.eps_lb), p)
                for _, p in self.reg_targets
            )
            terms.append(lam_t * barrier)
        if reg.lam_float > 0:
            attraction = sum(
                self._layer_mean(inward_l1_terms(self._values(p), reg.rho_f), p)
                for _, p in self.reg_targets
            )
            terms.append(reg.lam_float * attraction)
        if not terms:
            return None, lam_t
        return sum(terms), lam_t

    def _values(self, param: torch.Tensor) -> torch.Tensor:
        """The entries of ``param`` this process holds (a sharded trial's local shard)."""
        return param

    def _layer_mean(self, terms: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """(1/mn) Σ over the layer of per-entry ``terms`` of ``param``."""
        return terms.mean()

    def _template_of(self, name: str) -> torch.Tensor:
        return self.templates[name]

    def project(self) -> int:
        """Apply the hard projection (E.3.2) to every templated layer; entries changed (on this
        process's entries)."""
        if not self.cfg.regularizer.projection:
            return 0
        params = dict(self.init_targets)
        return sum(
            project_to_template_(self._values(params[name]), self._template_of(name))
            for name in self.templates
        )
