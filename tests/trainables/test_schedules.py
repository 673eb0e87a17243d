"""LR schedules (D.4.1, D.4.5) and λ(t) (C.4.1) against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from signlock.trainables.config import ScheduleConfig
from signlock.trainables.schedules import LRMultiplier, barrier_weight


def reference_lr(kind: str, t: int, total: int, warmup: int, gamma: float, p: float) -> float:
    """η_t/η_max written from D.4.1: linear warmup, then k = t - T_wu, N = T - T_wu."""
    if t < warmup:
        return (t + 1) / warmup
    k, n = t - warmup, total - warmup
    return {
        "constant": 1.0,
        "cosine": (1 + math.cos(math.pi * k / n)) / 2,
        "exponential": gamma**k,
        "inverse": (1 + k) ** (-p),
    }[kind]


@pytest.mark.parametrize("kind", ["constant", "cosine", "exponential", "inverse"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_multiplier_matches_formula(kind, warmup):
    total = 50
    schedule = LRMultiplier.from_config(
        ScheduleConfig(kind=kind, warmup_steps=warmup, gamma=0.9, power=0.7), total
    )
    for t in range(total):
        assert schedule(t) == pytest.approx(reference_lr(kind, t, total, warmup, 0.9, 0.7))


def test_cosine_squared_sum_identity_of_lemma_d15():
    # Lemma D.15: Σ_{k<N} η_{T_wu+k}² = (3/8) η_max² N + (1/2) η_max².
    total, warmup = 1000, 100
    schedule = LRMultiplier.from_config(ScheduleConfig(kind="cosine", warmup_steps=warmup), total)
    n = total - warmup
    squared = sum(schedule(warmup + k) ** 2 for k in range(n))
    assert squared == pytest.approx(3 / 8 * n + 1 / 2, rel=1e-9)


def test_schedule_drives_a_real_optimizer_and_round_trips():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    multiplier = LRMultiplier.from_config(ScheduleConfig(kind="inverse", warmup_steps=2), 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(
        [1e-3 * reference_lr("inverse", t, 10, 2, 0.999, 0.5) for t in range(5)]
    )
    state = scheduler.state_dict()
    assert all(isinstance(v, int | float | str | list | dict | type(None)) for v in state.values())


def test_barrier_weight_holds_then_decays_linearly():
    total, lam = 100, 0.3
    values = [barrier_weight(t, total, lam, 0.5) for t in range(total + 1)]
    assert values[:50] == [lam] * 50
    for t in range(50, total + 1):
        assert values[t] == pytest.approx(lam * (total - t) / 50)
    assert values[-1] == 0.0
    assert barrier_weight(10, total, lam, 1.0) == lam
    assert barrier_weight(0, total, lam, 0.0) == lam
