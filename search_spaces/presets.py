"""Single-trial presets: one function per paper setting, each with a ``-smoke`` size that runs
on two CPU cores in about a minute. ``trial_preset(name)`` returns a fresh ``TrialConfig``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from signlock.trainables.config import (
    DataConfig,
    InitConfig,
    OptimConfig,
    RegularizerConfig,
    TrackerConfig,
    TrialConfig,
)
from signlock.trainables.errors import ConfigError
from signlock.trainables.families.cnn import SYNTHETIC_IMAGES, CNNConfig
from signlock.trainables.families.gpt import SCALE_CONFIGS, GPTConfig, scale_model_config
from signlock.trainables.families.mlp import MLPConfig

SMOKE_LOG_EVERY = 25


def _smoke_size(
    full: TrialConfig, steps: int, eval_every: int, extra: dict[str, Any] | None = None
) -> TrialConfig:
    """``full`` at smoke size: named ``<full>-smoke``, ``steps`` steps logged every 25 and
    evaluated every ``eval_every``, with the ``extra`` dotted overrides."""
    return full.with_overrides(
        {
            "name": f"{full.name}-smoke",
            "steps": steps,
            "log_every": SMOKE_LOG_EVERY,
            "eval_every": eval_every,
            **(extra or {}),
        }
    )


def charlm() -> TrialConfig:
    """TinyCharLM baseline on Tiny Shakespeare (C.4.1; lock-in validation horizon T = 2000)."""
    return TrialConfig(name="charlm", steps=2000, log_every=50, eval_every=200)


def charlm_smoke() -> TrialConfig:
    """Smoke size of ``charlm``: 300 steps, checkpoints every 100 (needs Tiny Shakespeare)."""
    return _smoke_size(charlm(), 300, 100, {"data.eval_batches": 5, "checkpoint_every": 100})


def charlm_lockin() -> TrialConfig:
    """Template r=2 + gap init + log-barrier on TinyCharLM (Section 4, C.4.1; T = 12000)."""
    return TrialConfig(
        name="charlm-lockin",
        steps=12000,
        log_every=100,
        eval_every=1000,
        init=InitConfig(a_init=0.02, template_rank=2),
        regularizer=RegularizerConfig(lam=0.01),
    )


def charlm_lockin_smoke() -> TrialConfig:
    """Smoke size of ``charlm-lockin``: short run with the hard projection of E.3.2."""
    return _smoke_size(
        charlm_lockin(), 200, 100, {"data.eval_batches": 5, "regularizer.projection": True}
    )


def charlm_floating() -> TrialConfig:
    """Sign-floating mode: inward ℓ1 attraction λ_float = 1e4, ρ_f = 1e-2, T = 2000 (D.6.3)."""
    return TrialConfig(
        name="charlm-floating",
        steps=2000,
        log_every=50,
        eval_every=200,
        regularizer=RegularizerConfig(lam_float=1e4, rho_f=1e-2),
    )


def charlm_floating_smoke() -> TrialConfig:
    """Smoke size of ``charlm-floating``: a short sign-floating run (D.6)."""
    return _smoke_size(charlm_floating(), 200, 100, {"data.eval_batches": 5})


def synthetic_lm() -> TrialConfig:
    """12-layer d=256 LM on the synthetic corpus (C.3.6): Adam (AdamW, decay 0), lr 3e-4, B=64,
    5000 steps, logged every 50 steps. Needs no download."""
    return TrialConfig(
        name="synthetic-lm",
        steps=5000,
        log_every=50,
        eval_every=500,
        model=GPTConfig(d_model=256, n_layers=12, n_heads=4, d_ff=1024, context_length=128),
        data=DataConfig(dataset="synthetic", batch_size=64),
        optim=OptimConfig(weight_decay=0.0),
    )


def synthetic_smoke() -> TrialConfig:
    """Smoke size of ``synthetic-lm``: a tiny LM on the offline synthetic corpus (the demo)."""
    return _smoke_size(
        synthetic_lm(),
        150,
        75,
        {
            "name": "synthetic-smoke",
            "model.n_layers": 2,
            "model.d_model": 64,
            "model.d_ff": 128,
            "data.eval_batches": 4,
            "data.synthetic_sequences": 512,
            "checkpoint_every": 75,
        },
    )


def vision_mlp() -> TrialConfig:
    """784-256-256-10 MLP on MNIST (E.2.1): AdamW, batch 128, eval batch 512, T = 2000."""
    return TrialConfig(
        name="vision-mlp",
        steps=2000,
        log_every=50,
        eval_every=250,
        model=MLPConfig(hidden_sizes=[256, 256]),
        data=DataConfig(dataset="mnist", batch_size=128, eval_batch_size=512),
    )


def vision_mlp_smoke() -> TrialConfig:
    """Smoke size of ``vision-mlp``: 100 steps on MNIST (E.2)."""
    return _smoke_size(vision_mlp(), 100, 50)


def vision_cnn() -> TrialConfig:
    """A small CNN (conv 16, conv 32, 3 × 3 kernels, 2 × 2 max-pooling, Linear head) on MNIST,
    trained as E.2.1 trains the MLP: AdamW, batch 128, eval batch 512, T = 2000. The paper
    probes pretrained CNNs (ResNet18, Section 2, C.3.1) but trains none; this architecture is
    ours. Its Conv kernels are tracked as C_out × C_in·k_h·k_w matrices (C.3.2)."""
    return TrialConfig(
        name="vision-cnn",
        steps=2000,
        log_every=50,
        eval_every=250,
        model=CNNConfig(channels=[16, 32], kernel_size=3),
        data=DataConfig(dataset="mnist", batch_size=128, eval_batch_size=512),
    )


def vision_cnn_smoke() -> TrialConfig:
    """Smoke size of ``vision-cnn``: conv 8, conv 16 on the offline synthetic images, 100 steps
    at batch 32, one thread (small convolutions gain nothing from more on a CPU)."""
    return _smoke_size(
        vision_cnn(),
        100,
        50,
        {
            "model.channels": [8, 16],
            "data.dataset": SYNTHETIC_IMAGES,
            "data.batch_size": 32,
            "data.eval_batch_size": 256,
            "threads": 1,
        },
    )


def scale_trial(name: str) -> TrialConfig:
    """A Table-1 model trained as in C.5: L = 64, micro-batch 1, T = 1000, constant lr 3e-4,
    AdamW (8-bit when available) with weight decay 0.01, clip 1.0, 2048 tracked coordinates per
    tensor."""
    steps = 20 if name == "scale-debug" else 1000
    return TrialConfig(
        name=name,
        steps=steps,
        log_every=10 if name == "scale-debug" else 50,
        eval_every=steps,
        model=scale_model_config(name),
        data=DataConfig(seq_len=64, batch_size=1, eval_batch_size=16, eval_batches=5),
        optim=OptimConfig(lr=3e-4, weight_decay=0.01, grad_clip=1.0, eight_bit=True),
        tracker=TrackerConfig(sample_per_tensor=2048),
    )


def _scale_preset(name: str) -> Callable[[], TrialConfig]:
    def preset() -> TrialConfig:
        return scale_trial(name)

    what = "its tiny debug size" if name == "scale-debug" else f"Table 1 model {name}"
    preset.__doc__ = f"Scale family (C.5), {what}: bf16, micro-batch 1, 2048 tracked per tensor."
    return preset


TRIAL_PRESETS: dict[str, Callable[[], TrialConfig]] = {
    "charlm": charlm,
    "charlm-smoke": charlm_smoke,
    "charlm-lockin": charlm_lockin,
    "charlm-lockin-smoke": charlm_lockin_smoke,
    "charlm-floating": charlm_floating,
    "charlm-floating-smoke": charlm_floating_smoke,
    "synthetic-lm": synthetic_lm,
    "synthetic-smoke": synthetic_smoke,
    "vision-mlp": vision_mlp,
    "vision-mlp-smoke": vision_mlp_smoke,
    "vision-cnn": vision_cnn,
    "vision-cnn-smoke": vision_cnn_smoke,
    **{name: _scale_preset(name) for name in SCALE_CONFIGS},
}


def trial_preset(name: str) -> TrialConfig:
    if name not in TRIAL_PRESETS:
        raise ConfigError("preset", name, "one of " + ", ".join(TRIAL_PRESETS))
    return TRIAL_PRESETS[name]()
