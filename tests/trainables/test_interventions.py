"""Interventions against slow references written from Section 4, D.6.2 and E.3.2."""

from __future__ import annotations

import math
import random

import pytest
import torch
from scipy import stats

from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.interventions import (
    Interventions,
    gap_tail_mass,
    inward_l1,
    log_barrier,
    project_to_template_,
    sample_gap_magnitudes,
    sign_template,
    template_from_factors,
)
from signlock.trainables.models import build_model


def rejection_sample_gap(n: int, sigma: float, a: float, seed: int) -> list[float]:
    """Section 4, literally: draw z ~ N(0, σ²) and redraw while |z| < a."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        z = rng.gauss(0.0, sigma)
        if abs(z) >= a:
            out.append(abs(z))
    return out


@pytest.mark.parametrize(("sigma", "a"), [(0.02, 0.0), (0.02, 0.005), (0.02, 0.05), (1.0, 3.0)])
def test_gap_magnitudes_follow_the_truncated_gaussian(sigma, a):
    sample = sample_gap_magnitudes((20_000,), sigma, a, torch.Generator().manual_seed(0))
    assert float(sample.min()) >= a
    reference = rejection_sample_gap(20_000, sigma, a, seed=1)
    assert stats.ks_2samp(sample.numpy(), reference).pvalue > 1e-3

    def truncated_cdf(x):
        return 1.0 - (stats.norm.sf(x / sigma) * 2) / gap_tail_mass(a, sigma)

    assert stats.kstest(sample.numpy(), truncated_cdf).pvalue > 1e-3


def test_far_gap_is_still_exact_and_fast():
    # 4.5σ keeps ~7e-6 of the mass: a rejection loop would need ~150k draws per weight.
    sample = sample_gap_magnitudes((100_000,), 1.0, 4.5, torch.Generator().manual_seed(0))
    assert float(sample.min()) >= 4.5 and torch.isfinite(sample).all()
    assert float(sample.mean()) == pytest.approx(stats.truncnorm(4.5, math.inf).mean(), rel=1e-3)


def test_degenerate_gap_raises_a_config_error():
    with pytest.raises(ConfigError, match=r"init\.a_init"):
        sample_gap_magnitudes((3,), 0.02, 0.2, torch.Generator())


def reference_template(g: list[list[float]], h: list[list[float]]) -> list[list[int]]:
    """T_ij = sign(Σ_k G_ik H_jk), sign(0) = +1 (Section 4)."""
    return [[1 if sum(gi[k] * hj[k] for k in range(len(gi))) >= 0 else -1 for hj in h] for gi in g]


@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_template_matches_reference_and_is_reproducible(dist):
    shape, rank = (7, 5), 2
    template = sign_template(shape, rank, dist, torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(1234)
    if dist == "normal":
        g = torch.randn(7, rank, generator=generator, dtype=torch.float64)
        h = torch.randn(5, rank, generator=generator, dtype=torch.float64)
    else:
        g = torch.rand(7, rank, generator=generator, dtype=torch.float64) * 2 - 1
        h = torch.rand(5, rank, generator=generator, dtype=torch.float64) * 2 - 1
    assert template.tolist() == reference_template(g.tolist(), h.tolist())
    again = sign_template(shape, rank, dist, torch.Generator().manual_seed(1234))
    assert torch.equal(template, again) and template.dtype == torch.int8


def test_template_sign_of_zero_is_plus_one():
    g = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    h = torch.tensor([[1.0, 1.0], [2.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    assert template_from_factors(g, h).tolist() == [[1, 1, 1], [1, 1, -1]]


def test_rank_two_template_has_low_sign_rank_structure():
    # For r = 2 a row of sign(G Hᵀ) depends only on the direction of g_i, which n lines through
    # the origin cut into at most 2n arcs: at most 2n distinct rows, where ±1 noise has ~all.
    template = sign_template((2000, 16), 2, "normal", torch.Generator().manual_seed(0))
    distinct_rows = {tuple(row) for row in template.tolist()}
    assert len(distinct_rows) <= 2 * 16
    noise = torch.randint(0, 2, (2000, 16), generator=torch.Generator().manual_seed(0))
    assert len({tuple(row) for row in noise.tolist()}) > 1900


def reference_barrier(w: list[float], a: float, eps_lb: float) -> float:
    """R_LB = (1/mn) Σ log max{1, a/(|W_ij| + ε_lb)} (Section 4)."""
    return sum(math.log(max(1.0, a / (abs(x) + eps_lb))) for x in w) / len(w)


def reference_inward(w: list[float], rho_f: float) -> float:
    """R_ID = (1/mn) Σ min{|W_ij|, ρ_f} (D.6.2)."""
    return sum(min(abs(x), rho_f) for x in w) / len(w)


def test_barrier_and_inward_l1_match_references():
    w = torch.randn(12, 9, generator=torch.Generator().manual_seed(3)) * 0.03
    w[0, 0] = 0.0
    flat = w.flatten().tolist()
    assert float(log_barrier(w, 0.02, 1e-6)) == pytest.approx(
        reference_barrier(flat, 0.02, 1e-6), rel=1e-5
    )
    assert float(inward_l1(w, 0.01)) == pytest.approx(reference_inward(flat, 0.01), rel=1e-5)
    assert float(log_barrier(torch.full((4,), 0.5), 0.02, 1e-6)) == 0.0


def test_barrier_gradient_pushes_weights_out_of_the_band():
    w = torch.tensor([0.001, -0.002, 0.5], requires_grad=True)
    log_barrier(w, 0.02, 1e-6).backward()
    moved = w.detach() - 0.1 * w.grad  # one gradient-descent step
    assert moved[0] > 0.001 and moved[1] < -0.002 and moved[2] == 0.5


def test_projection_enforces_the_template_and_counts_changes():
    template = torch.tensor([[1, -1, 1], [-1, 1, 1]], dtype=torch.int8)
    w = torch.tensor([[0.3, 0.2, -0.1], [-0.4, 0.0, 0.7]])
    changed = project_to_template_(w, template)
    assert changed == 2
    assert torch.equal(w, torch.tensor([[0.3, -0.2, 0.1], [-0.4, 0.0, 0.7]]))
    assert project_to_template_(w, template) == 0


def lockin_config(**overrides) -> TrialConfig:
    base = {
        "model": {"d_model": 32, "n_heads": 2, "d_ff": 64, "context_length": 16},
        "data": {"dataset": "synthetic", "seq_len": 16, "synthetic_seq_len": 16},
    }
    return TrialConfig.from_dict(base).with_overrides(overrides)


def test_template_aware_gap_init_sets_signs_and_margins():
    cfg = lockin_config(**{"init.a_init": 0.03, "init.template_rank": 2})
    model = build_model(cfg.model, vocab_size=40)
    interventions = Interventions(cfg, model)
    interventions.initialize(seed=0)
    assert len(interventions.init_targets) == len(interventions.templates) > 0
    for name, param in interventions.init_targets:
        template = interventions.templates[name]
        assert torch.equal(torch.where(param >= 0, 1, -1).to(torch.int8), template)
        assert float(param.detach().abs().min()) >= 0.03


def test_templates_depend_on_the_global_seed_not_the_trial_seed():
    cfg = lockin_config(**{"init.template_rank": 2})
    first = Interventions(cfg, build_model(cfg.model, vocab_size=40)).templates
    second = Interventions(
        cfg.with_overrides({"seed": 5}), build_model(cfg.model, vocab_size=40)
    ).templates
    other = Interventions(
        cfg.with_overrides({"init.template_seed": 7}), build_model(cfg.model, vocab_size=40)
    ).templates
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_gap_only_init_has_balanced_random_signs():
    cfg = lockin_config(**{"init.c_gap": 1.0})
    model = build_model(cfg.model, vocab_size=40)
    Interventions(cfg, model).initialize(seed=0)
    weights = torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() >= 2])
    assert float(weights.abs().min()) >= 0.02
    assert abs(float((weights > 0).float().mean()) - 0.5) < 0.02


def test_penalty_is_lambda_t_times_summed_barriers():
    cfg = lockin_config(**{"init.a_init": 0.03, "regularizer.lam": 0.2, "steps": 10})
    model = build_model(cfg.model, vocab_size=40)
    interventions = Interventions(cfg, model)
    expected = sum(
        reference_barrier(p.detach().flatten().tolist(), 0.03, 1e-6)
        for _, p in interventions.reg_targets
    )
    penalty, lam_t = interventions.penalty(step=0)
    assert lam_t == 0.2 and float(penalty) == pytest.approx(0.2 * expected, rel=1e-4)
    penalty, lam_t = interventions.penalty(step=9)
    assert lam_t == pytest.approx(0.2 * 1 / 5) and float(penalty) == pytest.approx(
        lam_t * expected, rel=1e-4
    )


def test_unknown_target_name_is_a_config_error():
    cfg = lockin_config(**{"init.targets": ["no.such.weight"], "init.template_rank": 2})
    with pytest.raises(ConfigError, match=r"init\.targets"):
        Interventions(cfg, build_model(cfg.model, vocab_size=40))
