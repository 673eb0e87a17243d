"""Predicted peak memory of one training trial, before anything is allocated.

Counted on the ``meta`` device from the trial config, per component:

- weights: every parameter at its storage dtype (bf16 models keep LayerNorms in fp32, C.5);
- gradients: one per parameter, at the parameter's dtype;
- optimizer state: ``torch.optim.AdamW`` keeps ``exp_avg`` and ``exp_avg_sq`` in the parameter's
  dtype (2 × weights); bitsandbytes' AdamW8bit keeps two uint8 states per parameter plus one fp32
  absmax per block of 256 values for each (2 + 8/256 bytes per parameter);
- activations saved for backward at the trial's micro-batch (and sequence length), from the
  tensors its family's model saves (``Family.activation_bytes``; for the GPT
  :func:`signlock.trainables.families.gpt.activation_bytes_per_token`), with and without
  per-block gradient checkpointing, plus the loss's backward buffers;
- the sign tracker, over its tracked scalars (every matrix-shaped parameter, or
  ``sample_per_tensor`` per tensor), in the layout of the device it runs on. On a GPU (fused
  dense pass, torch sparse step): its per-scalar buffers (``tracker.resident_bytes_per_scalar``),
  the sampled indices, one byte per scalar of flagged mask words at worst, and the sparse
  step's temporaries per candidate, measured with torch's profiler on the torch backend and
  bounded by the chunk of candidates processed at once. On a CPU (eager passes, numpy sparse
  step): the bytes per scalar measured on a small tensor with torch's profiler (resident buffers
  and the temporaries of one ``observe``). The profiler (``profile_memory``) records each op's
  own CPU allocations less its frees; their running sum in the order the ops started is the
  live memory at op granularity, and its maximum the peak;
- on a GPU, ``CUDA_WORKSPACE_BYTES`` of cuBLAS/cuBLASLt workspaces the caching allocator holds.

The peak is the sum of weights, gradients, the optimizer state the trial will use, its
activations (checkpointed if it checkpoints), the tracker and, on a GPU, the workspaces.
Evaluation runs without gradients at ``eval_batch_size`` and is not the peak. ``peak`` is the GPU
figure (what ``--gpu-memory`` checks); ``cpu_peak`` the same trial on a CPU. A trial fits a GPU
when the peak is at most ``USABLE_FRACTION`` of the GPU's memory (the rest: CUDA context,
allocator fragmentation). Measured against ``torch.cuda.max_memory_allocated`` on an H200 (see
BENCHMARKS.md, bench/scale_gpu.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.families import family_of

COMMON_GPUS_GB = (24, 40, 48, 80, 141)
USABLE_FRACTION = 0.9
FP32 = 4
ADAM8_BYTES_PER_PARAM = 2 + 2 * FP32 / 256  # two uint8 states + their fp32 absmax per 256 values
# Measured 59–64 MiB above every other component at each scale-family size (H200, torch 2.11).
CUDA_WORKSPACE_BYTES = 64 * 2**20
INDEX_BYTES = 8  # int64 index of each sampled coordinate
KINETO_LOG_LEVEL, KINETO_QUIET = "KINETO_LOG_LEVEL", "9"  # above every level kineto logs at
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(G|GB|GIB|M|MB|MIB|T|TB|TIB)?\s*$", re.IGNORECASE)
_UNIT = {"G": 2**30, "M": 2**20, "T": 2**40}


def parse_memory_size(text: str, flag: str = "--gpu-memory") -> int:
    """``80GB``, ``80G``, ``141GiB``, ``40960MB`` → bytes (binary units: GPU makers' GB)."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(flag, text, "a memory size such as 80GB, 24G or 40960MB")
    unit = (match.group(2) or "G").upper()[0]
    return int(float(match.group(1)) * _UNIT[unit])


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component of one trial's predicted peak."""

    params: int
    weights: int
    gradients: int
    optimizer_adamw: int
    optimizer_adamw8bit: int
    activations: int
    activations_checkpointed: int
    tracked_scalars: int
    tracker: int  # on a GPU
    tracker_on_cpu: int
    eight_bit: bool
    checkpointing: bool

    @property
    def optimizer(self) -> int:
        return self.optimizer_adamw8bit if self.eight_bit else self.optimizer_adamw

    @property
    def activations_used(self) -> int:
        return self.activations_checkpointed if self.checkpointing else self.activations

    @property
    def training(self) -> int:
        """Weights, gradients, optimizer state and activations (both devices)."""
        return self.weights + self.gradients + self.optimizer + self.activations_used

    @property
    def peak(self) -> int:
        """On a GPU."""
        return self.training + self.tracker + CUDA_WORKSPACE_BYTES

    @property
    def cpu_peak(self) -> int:
        return self.training + self.tracker_on_cpu

    def fits(self, gpu_bytes: int) -> bool:
        return self.peak <= USABLE_FRACTION * gpu_bytes

    def fitting_gpus(self) -> list[int]:
        return [gb for gb in COMMON_GPUS_GB if self.fits(gb * 2**30)]


@contextlib.contextmanager
def _quiet_profiler() -> Iterator[None]:
    """Kineto, the profiler's backend, logs every session start and stop to stderr unless its
    level is raised before its first session; a level the user set is left alone."""
    chosen = os.environ.get(KINETO_LOG_LEVEL)
    os.environ.setdefault(KINETO_LOG_LEVEL, KINETO_QUIET)
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop(KINETO_LOG_LEVEL, None)


def allocated_peak(run: Callable[[], object]) -> int:
    """The most CPU tensor memory ``run`` held at once above what was live before it, from
    torch's profiler: each op's own allocations less its frees, summed in the order the ops
    started."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        run()
    events = sorted(p.events(), key=lambda event: event.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@functools.lru_cache(maxsize=4)
def tracker_bytes_per_scalar(sampled: bool) -> float:
    """The sign tracker's memory per tracked scalar, measured: its resident buffers plus the
    temporaries of one ``observe`` (torch's profiler over a 64k-element tensor)."""
    from signlock.trainables.tracker import SignTracker

    n = 1 << 16
    weights = torch.nn.Parameter(torch.randn(n) * 0.02)
    sample = n // 2 if sampled else None
    trackers: list[SignTracker] = []

    def build_and_observe() -> None:
        trackers.append(SignTracker([("w", weights)], sample_per_tensor=sample))
        with torch.no_grad():
            weights.add_(1e-3)
        trackers[0].observe()

    return allocated_peak(build_and_observe) / trackers[0].n_tracked


@functools.lru_cache(maxsize=1)
def sparse_bytes_per_candidate() -> float:
    """Temporaries of the torch sparse step per flagged scalar, measured with torch's profiler on
    the observation that flags every scalar (all start beyond ρ), less the tracker's resident
    buffers and the flagged mask words."""
    from signlock.trainables.tracker import SignTracker, resident_bytes_per_scalar

    n = 1 << 16
    weights = torch.nn.Parameter(0.02 + torch.rand(n) * 0.02)
    peak = allocated_peak(lambda: SignTracker([("w", weights)], backend="torch", fused=False))
    resident = resident_bytes_per_scalar(torch.float32, fused=False) * n
    return (peak - resident - n) / n  # n: the int64 mask words, 1 B per scalar


def gpu_tracker_bytes(
    targets: list[tuple[str, torch.Tensor]], sample: int | None, *, fused: bool = True
) -> int:
    """The tracker's peak bytes on a GPU (torch sparse step; the compiled dense pass allocates
    nothing, the eager one keeps its two output buffers)."""
    from signlock.trainables.tracker import CANDIDATE_CHUNK_WORDS, resident_bytes_per_scalar

    counts = [
        (p.numel() if sample is None else min(sample, p.numel()), p.dtype) for _, p in targets
    ]
    n = sum(count for count, _ in counts)
    resident = sum(
        count * (resident_bytes_per_scalar(dtype, fused=fused) + (sample is not None) * INDEX_BYTES)
        for count, dtype in counts
    )
    per_dtype: dict[torch.dtype, int] = {}  # one group per dtype, observed one after another
    for count, dtype in counts:
        per_dtype[dtype] = per_dtype.get(dtype, 0) + count
    chunk = min(max(per_dtype.values()), 8 * CANDIDATE_CHUNK_WORDS)
    return int(resident + n + chunk * sparse_bytes_per_candidate())


def _meta_model(cfg: TrialConfig, vocab: int | None) -> torch.nn.Module:
    from signlock.trainables.models import build_model

    return build_model(cfg.model, vocab_size=vocab, device="meta")


def tracked_tensors(cfg: TrialConfig, model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors the trial's sign tracker follows (none when it is off)."""
    from signlock.trainables.interventions import resolve_targets

    if not cfg.tracker.enabled:
        return []
    return resolve_targets(model, cfg.tracker.targets, "tracker.targets")


def tracked_scalars(cfg: TrialConfig, model: torch.nn.Module) -> int:
    """How many scalars the trial's sign tracker follows (0 when it is off)."""
    sample = cfg.tracker.sample_per_tensor
    return sum(
        p.numel() if sample is None else min(sample, p.numel())
        for _, p in tracked_tensors(cfg, model)
    )


def estimate_memory(cfg: TrialConfig, vocab: int | None) -> MemoryEstimate:
    """The predicted peak of one training step of ``cfg`` (see the module docstring)."""
    model = _meta_model(cfg, vocab)
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    activations, checkpointed = family_of(cfg).activation_bytes(cfg, vocab)
    n_tracked = tracked_scalars(cfg, model)
    sample = cfg.tracker.sample_per_tensor
    per_scalar_on_cpu = tracker_bytes_per_scalar(sample is not None)
    on_gpu = gpu_tracker_bytes(tracked_tensors(cfg, model), sample) if n_tracked else 0
    return MemoryEstimate(
        params=params,
        weights=weights,
        gradients=weights,
        optimizer_adamw=2 * weights,
        optimizer_adamw8bit=int(ADAM8_BYTES_PER_PARAM * params),
        activations=activations,
        activations_checkpointed=checkpointed,
        tracked_scalars=n_tracked,
        tracker=on_gpu,
        tracker_on_cpu=int(n_tracked * per_scalar_on_cpu),
        eight_bit=cfg.optim.eight_bit,
        checkpointing=cfg.model.gradient_checkpointing,
    )


def model_key(cfg: TrialConfig) -> str:
    """Trials with the same key have the same memory plan."""
    relevant = {
        "model": cfg.to_dict()["model"],
        "batch": [cfg.data.batch_size, family_of(cfg).units_per_step(cfg)],
        "dataset": cfg.data.dataset,
        "vocab": cfg.data.synthetic_vocab,
        "optim8": cfg.optim.eight_bit,
        "tracker": [cfg.tracker.enabled, cfg.tracker.sample_per_tensor, cfg.tracker.targets],
    }
    return json.dumps(relevant, sort_keys=True)


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_estimate(label: str, estimate: MemoryEstimate) -> list[str]:
    """The plan's lines for one distinct model."""
    used = "8-bit AdamW" if estimate.eight_bit else "AdamW"
    ckpt = "checkpointed" if estimate.checkpointing else "no checkpointing"
    fits = estimate.fitting_gpus()
    return [
        f"    {label}: peak {format_bytes(estimate.peak)} per trial ({used}, {ckpt})",
        f"      weights {format_bytes(estimate.weights)}, gradients "
        f"{format_bytes(estimate.gradients)}",
        f"      optimizer: AdamW {format_bytes(estimate.optimizer_adamw)}, 8-bit AdamW "
        f"{format_bytes(estimate.optimizer_adamw8bit)}",
        f"      activations: {format_bytes(estimate.activations)} without, "
        f"{format_bytes(estimate.activations_checkpointed)} with gradient checkpointing",
        f"      sign tracker: {estimate.tracked_scalars:,} scalars, "
        f"{format_bytes(estimate.tracker)} on a GPU ({format_bytes(estimate.tracker_on_cpu)} "
        "on a CPU)",
        f"      CUDA workspaces: {format_bytes(CUDA_WORKSPACE_BYTES)}",
        "      fits GPUs of: "
        + (", ".join(f"{gb} GB" for gb in fits) if fits else "none of ")
        + ("" if fits else ", ".join(f"{gb} GB" for gb in COMMON_GPUS_GB)),
    ]
