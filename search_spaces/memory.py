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
  ``sample_per_tensor`` per tensor), from the lean layout's table (``_lean_kernel``): two bytes
  per tracked scalar (state and K) plus the int64 index of each sampled one, and the temporaries
  of the worst observation (every scalar's code changes), bounded by the chunk compared at once.
  On a GPU (torch backend, each tensor compared in place) those are measured per scalar with
  torch's profiler; on a CPU (the compiled dense pass, or numpy without a C compiler) add each
  dtype group's fixed scratch, and the numpy temporaries measured with ``tracemalloc``. The
  profiler (``profile_memory``) records each op's own CPU allocations less its frees; their
  running sum in the order the ops started is the live memory at op granularity, and its
  maximum the peak. The tracker's host tables (τ1 entries, K ≥ 255) grow with the events that
  happen; the plan states their worst case;
- on a GPU, ``CUDA_WORKSPACE_BYTES`` of cuBLAS/cuBLASLt workspaces the caching allocator holds.

Sharded over N FSDP2 workers (``workers_per_trial``, :mod:`signlock.trainables.sharded`), each
device holds 1/N of the weights, gradients, optimizer state and tracker, the activations of its
1/N of the batch, and the all-gather buffers: the root group's (embeddings, head, final norm:
unsharded from the start of the forward pass to the end of the backward pass) weights and
gradients, and two blocks' weights and gradients (the one computing and the one prefetched or
being reduce-scattered). A sharded trial runs ``torch.optim.AdamW`` (bitsandbytes' 8-bit AdamW
is not FSDP2-safe), so its optimizer state is AdamW's two moments. Not yet measured on GPUs
(none was lent): a plan, see BENCHMARKS.md.

The peak is the sum of weights, gradients, the optimizer state the trial will use, the tracker's
resident bytes, the larger of its activations (checkpointed if it checkpoints) and the tracker's
observation temporaries (it observes after the backward pass has freed the activations) and, on
a GPU, the workspaces.
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
import tracemalloc
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
NATIVE_SCRATCH_BYTES = 5  # the compiled dense pass's int32 index and code per chunk scalar
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
    tracker: int  # resident, on a GPU
    tracker_observing: int  # what one observation adds at most, on a GPU
    tracker_on_cpu: int
    tracker_observing_on_cpu: int
    eight_bit: bool
    checkpointing: bool
    largest_block: int = 0  # weight bytes of the largest FSDP block (a GPT's transformer block)
    root_weights: int = 0  # weight bytes outside every block (the FSDP root group)

    @property
    def optimizer(self) -> int:
        return self.optimizer_adamw8bit if self.eight_bit else self.optimizer_adamw

    @property
    def activations_used(self) -> int:
        return self.activations_checkpointed if self.checkpointing else self.activations

    @property
    def state(self) -> int:
        """Weights, gradients and optimizer state (both devices)."""
        return self.weights + self.gradients + self.optimizer

    @property
    def peak(self) -> int:
        """On a GPU. The tracker observes after the optimizer step, when the backward pass has
        freed the activations: its temporaries and the activations are never live together."""
        transient = max(self.activations_used, self.tracker_observing)
        return self.state + self.tracker + transient + CUDA_WORKSPACE_BYTES

    @property
    def cpu_peak(self) -> int:
        transient = max(self.activations_used, self.tracker_observing_on_cpu)
        return self.state + self.tracker_on_cpu + transient

    def gather_buffers(self) -> int:
        """FSDP2's unsharded weights and gradients alive at once: the root group's, and two
        blocks' (the computing one and the prefetched or reduce-scattering one)."""
        return 2 * self.root_weights + 4 * self.largest_block

    def per_device_peak(self, workers: int) -> int:
        """The GPU peak of each of ``workers`` FSDP2 workers (``workers=1``: :attr:`peak`)."""
        if workers == 1:
            return self.peak
        transient = max(self.activations_used, self.tracker_observing) / workers
        state = self.weights + self.gradients + self.optimizer_adamw  # no 8-bit AdamW on FSDP2
        sharded = (state + self.tracker) / workers
        return int(sharded + self.gather_buffers() + transient + CUDA_WORKSPACE_BYTES)

    def fits(self, gpu_bytes: int, workers: int = 1) -> bool:
        return self.per_device_peak(workers) <= USABLE_FRACTION * gpu_bytes

    def fitting_gpus(self, workers: int = 1) -> list[int]:
        return [gb for gb in COMMON_GPUS_GB if self.fits(gb * 2**30, workers)]

    def workers_needed(self, gpu_gb: int, most: int = 64) -> int | None:
        """The fewest FSDP2 workers (GPUs) of ``gpu_gb`` GB each that hold one trial."""
        return next((n for n in range(1, most + 1) if self.fits(gpu_gb * 2**30, n)), None)


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


def _flipping_tracker(
    dtype: torch.dtype, backend: str, n: int = 1 << 16
) -> tuple[object, torch.Tensor]:
    """A tracker over ``n`` scalars of ``dtype`` all beyond ρ, and its weights: negating them
    then changes every scalar's code, the observation with the most work (the worst case)."""
    from signlock.trainables.tracker import SignTracker

    weights = torch.nn.Parameter((0.02 + torch.rand(n) * 0.02).to(dtype))
    return SignTracker([("w", weights)], backend=backend), weights


@functools.lru_cache(maxsize=8)
def torch_observe_bytes_per_scalar(dtype: torch.dtype) -> float:
    """Temporaries of one observation per scalar on the torch backend (the GPU's) when every
    scalar's code changes, measured with torch's profiler (same ops and dtypes as on CUDA)."""
    tracker, weights = _flipping_tracker(dtype, "torch")
    with torch.no_grad():
        weights.mul_(-1)
    return allocated_peak(tracker.observe) / weights.numel()  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4)
def cpu_observe_bytes_per_scalar(backend: str) -> float:
    """Temporaries of one observation on a CPU backend per scalar of a ``PACKED_CHUNK``-scalar
    tensor whose every code changes (the worst case), from ``tracemalloc`` (which sees numpy's
    memory; the tracker's own buffers exist before it starts)."""
    from signlock.trainables.tracker import PACKED_CHUNK

    tracker, weights = _flipping_tracker(torch.float32, backend, PACKED_CHUNK)
    with torch.no_grad():
        weights.mul_(-1)
    tracemalloc.start()
    try:
        tracker.observe()  # type: ignore[attr-defined]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / PACKED_CHUNK


def _tracked_counts(
    targets: list[tuple[str, torch.Tensor]], sample: int | None
) -> list[tuple[int, torch.dtype]]:
    return [(p.numel() if sample is None else min(sample, p.numel()), p.dtype) for _, p in targets]


def _resident_tracker_bytes(counts: list[tuple[int, torch.dtype]], sample: int | None) -> int:
    """The state and K bytes of every tracked scalar, and its index when sampling."""
    from signlock.trainables.tracker import DENSE_BYTES_PER_SCALAR

    per_scalar = DENSE_BYTES_PER_SCALAR + (sample is not None) * INDEX_BYTES
    return sum(count for count, _ in counts) * per_scalar


@dataclass(frozen=True)
class TrackerBytes:
    """What the sign tracker holds throughout a trial, and what one observation adds at most."""

    resident: int
    observing: int


def gpu_tracker_bytes(targets: list[tuple[str, torch.Tensor]], sample: int | None) -> TrackerBytes:
    """The tracker on a GPU: resident bytes, and the worst observation's temporaries over the
    largest chunk compared at once (tensors are compared one by one)."""
    from signlock.trainables.tracker import CODE_CHUNK

    counts = _tracked_counts(targets, sample)
    temporaries = max(
        (min(count, CODE_CHUNK) * torch_observe_bytes_per_scalar(dtype) for count, dtype in counts),
        default=0,
    )
    return TrackerBytes(_resident_tracker_bytes(counts, sample), int(temporaries))


def cpu_tracker_bytes(targets: list[tuple[str, torch.Tensor]], sample: int | None) -> TrackerBytes:
    """The same on a CPU, for the backend ``"auto"`` picks here: resident bytes plus each
    compute dtype's fixed scratch (the compiled pass's output buffers, 5 bytes per scalar of the
    largest chunk, and a packing buffer where a tensor is sampled or of another dtype; the numpy
    pass's ``CodeScratch`` and packing buffer), and the worst observation's numpy temporaries
    over the largest chunk."""
    from signlock.trainables.tracker import PACKED_CHUNK, compute_dtype, cpu_backend

    backend = cpu_backend()
    counts = _tracked_counts(targets, sample)
    groups: dict[torch.dtype, list[tuple[int, torch.dtype]]] = {}
    for count, dtype in counts:
        groups.setdefault(compute_dtype(dtype), []).append((count, dtype))
    scratch, largest = 0, 0
    for compute, members in groups.items():
        chunk = min(sum(count for count, _ in members), PACKED_CHUNK)
        if backend == "native":  # tensors read in place, the rest packed together
            packs = sample is not None or any(dtype != compute for _, dtype in members)
            if not packs:
                chunk = max(min(count, PACKED_CHUNK) for count, _ in members)
            scratch += chunk * NATIVE_SCRATCH_BYTES + packs * chunk * compute.itemsize
        else:
            scratch += chunk * (2 * compute.itemsize + 3)
        largest = max(largest, chunk)
    temporaries = largest * cpu_observe_bytes_per_scalar(backend)
    return TrackerBytes(_resident_tracker_bytes(counts, sample) + scratch, int(temporaries))


def host_table_bytes_worst(n_tracked: int) -> tuple[int, int]:
    """Host tables if every tracked scalar hits the band (τ1 entries), and what K overflow
    entries add if every one also flips 255 times or more."""
    from signlock.trainables.tracker import K_OVERFLOW_ENTRY_BYTES, TAU1_ENTRY_BYTES

    return n_tracked * TAU1_ENTRY_BYTES, n_tracked * K_OVERFLOW_ENTRY_BYTES


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
    targets = tracked_tensors(cfg, model)
    none = TrackerBytes(0, 0)
    on_gpu = gpu_tracker_bytes(targets, sample) if n_tracked else none
    on_cpu = cpu_tracker_bytes(targets, sample) if n_tracked else none
    block_bytes = _block_weight_bytes(model)
    return MemoryEstimate(
        params=params,
        weights=weights,
        gradients=weights,
        optimizer_adamw=2 * weights,
        optimizer_adamw8bit=int(ADAM8_BYTES_PER_PARAM * params),
        activations=activations,
        activations_checkpointed=checkpointed,
        tracked_scalars=n_tracked,
        tracker=on_gpu.resident,
        tracker_observing=on_gpu.observing,
        tracker_on_cpu=on_cpu.resident,
        tracker_observing_on_cpu=on_cpu.observing,
        eight_bit=cfg.optim.eight_bit,
        checkpointing=cfg.model.gradient_checkpointing,
        largest_block=max(block_bytes, default=0),
        root_weights=weights - sum(block_bytes),
    )


def _block_weight_bytes(model: torch.nn.Module) -> list[int]:
    """Weight bytes of each FSDP block: every member of an ``nn.ModuleList`` (as
    ``trainables.sharded.shard_model`` groups them)."""
    return [
        sum(p.numel() * p.element_size() for p in block.parameters())
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList)
        for block in module
    ]


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


def format_estimate(label: str, estimate: MemoryEstimate, workers: int = 1) -> list[str]:
    """The plan's lines for one distinct model (sharded over ``workers`` FSDP2 workers)."""
    used = "8-bit AdamW" if estimate.eight_bit and workers == 1 else "AdamW"
    ckpt = "checkpointed" if estimate.checkpointing else "no checkpointing"
    fits = estimate.fitting_gpus(workers)
    hits, overflows = host_table_bytes_worst(estimate.tracked_scalars)
    per = "per trial" if workers == 1 else f"per device, {workers} FSDP workers per trial"
    peak = format_bytes(estimate.per_device_peak(workers))
    needed = [(gb, estimate.workers_needed(gb)) for gb in COMMON_GPUS_GB]
    return [
        f"    {label}: peak {peak} {per} ({used}, {ckpt})",
        f"      weights {format_bytes(estimate.weights)}, gradients "
        f"{format_bytes(estimate.gradients)}",
        f"      optimizer: AdamW {format_bytes(estimate.optimizer_adamw)}, 8-bit AdamW "
        f"{format_bytes(estimate.optimizer_adamw8bit)}",
        f"      activations: {format_bytes(estimate.activations)} without, "
        f"{format_bytes(estimate.activations_checkpointed)} with gradient checkpointing",
        f"      sign tracker: {estimate.tracked_scalars:,} scalars, "
        f"{format_bytes(estimate.tracker)} on a GPU ({format_bytes(estimate.tracker_on_cpu)} "
        "on a CPU)",
        f"        observing adds at most {format_bytes(estimate.tracker_observing)} on a GPU "
        f"({format_bytes(estimate.tracker_observing_on_cpu)} on a CPU), after the backward "
        "pass frees the activations",
        f"        host tables, worst case: {format_bytes(hits)} if every scalar hits the band, "
        f"{format_bytes(overflows)} more if every one flips 255+ times",
        f"      CUDA workspaces: {format_bytes(CUDA_WORKSPACE_BYTES)}",
        f"      FSDP all-gather buffers: {format_bytes(estimate.gather_buffers())} per device "
        "when sharded",
        "      FSDP workers (GPUs) one trial needs: "
        + ", ".join(f"{gb} GB: {n if n is not None else 'over 64'}" for gb, n in needed),
        "      fits GPUs of: "
        + (", ".join(f"{gb} GB" for gb in fits) if fits else "none of ")
        + ("" if fits else ", ".join(f"{gb} GB" for gb in COMMON_GPUS_GB)),
    ]
