"""Learning-rate schedules (D.4.1, D.4.5) and the log-barrier weight λ(t) (C.4.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from signlock.trainables.config import ScheduleConfig


@dataclass(frozen=True)
class LRMultiplier:
    """η_t / η_max at optimizer step t, for ``torch.optim.lr_scheduler.LambdaLR``.

    Warmup is linear, η_t = η_max (t+1)/T_wu for t < T_wu. After it, with k = t - T_wu and
    N = T - T_wu (D.4.1): cosine η_max (1 + cos(πk/N))/2 (Lemma D.15), exponential η_max γ^k
    (Lemma D.16), inverse η_max (1+k)^(-p) (Lemma D.17), constant η_max.
    A frozen dataclass rather than a closure so that LambdaLR's state_dict holds only numbers.
    """

    kind: str
    total_steps: int
    warmup_steps: int
    gamma: float
    power: float

    @classmethod
    def from_config(cls, cfg: ScheduleConfig, total_steps: int) -> LRMultiplier:
        return cls(
            kind=cfg.kind,
            total_steps=total_steps,
            warmup_steps=cfg.warmup_steps,
            gamma=cfg.gamma,
            power=cfg.power,
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        k = step - self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        if self.kind == "cosine":
            return (1.0 + math.cos(math.pi * min(k, decay_steps) / decay_steps)) / 2.0
        if self.kind == "exponential":
            return self.gamma**k
        if self.kind == "inverse":
            return (1.0 + k) ** (-self.power)
        return 1.0


def barrier_weight(step: int, total_steps: int, lam: float, hold_fraction: float) -> float:
    """λ(t): constant ``lam`` for the first ``hold_fraction`` of training, then linearly decayed to
    0 at t = T (C.4.1: "held constant for the first half of training, then linearly decayed")."""
    hold_steps = hold_fraction * total_steps
    if step < hold_steps:
        return lam
    decay_steps = total_steps - hold_steps
    if decay_steps <= 0:
        return 0.0
    return lam * max(0.0, (total_steps - step) / decay_steps)
