"""The C.5 scale family on one GPU: step time and tokens/s without tracking, with sampled (2048
per tensor) and with full sign tracking; the tracker's share of the step; peak memory against
the memory planner.

Each model trains as its ``scale-*`` preset does (bf16 weights with fp32 LayerNorms, bf16
autocast, per-block gradient checkpointing, AdamW8bit where bitsandbytes imports, micro-batch 1
× 64 characters of Tiny Shakespeare) through the trainer's own ``Trial.train_step``. In every
timed step, in one process, the training step, the sampled tracker's ``observe()`` and the full
tracker's ``observe()`` are timed one after the other with the device synchronised between
them, so all three see the same weights and the same machine state; both trackers observe
every step, as in a real trial. Tokens/s with tracking = tokens per step / (step + observe).

Memory, per mode (no tracker, sampled, full), in a steady-state step after warm-up: the peak
of forward + backward + clipping, the peak inside ``optimizer.step`` and the peak of the
tracker's ``observe``, each from ``torch.cuda.max_memory_allocated`` with the peak reset in
between; the step's peak is the largest, compared with ``estimate_memory``. Full tracking is
only attempted where the planner says it fits the card.

    python bench/scale_gpu.py --data tinyshakespeare.txt [--models scale-31m,scale-1.2b]
        [--steps 30] [--warmup 5] [--out scale_gpu.json] [--device cuda]

The default model list is Issue 11's: scale-31m, -126m, -604m, -1.2b, -2.4b, -5.4b and the
largest Table-1 model the planner fits on the card.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from signlock.search_spaces.memory import USABLE_FRACTION, estimate_memory
from signlock.search_spaces.presets import trial_preset
from signlock.trainables._sign_kernel import resident_bytes_per_scalar
from signlock.trainables.config import TrialConfig
from signlock.trainables.flat_tracker import FlatSignTracker
from signlock.trainables.interventions import resolve_targets
from signlock.trainables.models import SCALE_CONFIGS
from signlock.trainables.tracker import SignTracker
from signlock.trainables.trainer import Trial

GIB = 2**30
SAMPLE_PER_TENSOR = 2048  # C.5
REQUIRED_MODELS = (
    "scale-31m",
    "scale-126m",
    "scale-604m",
    "scale-1.2b",
    "scale-2.4b",
    "scale-5.4b",
)
MODES = ("none", "sampled", "full")
PHASES = ("forward_backward", "optimizer_step", "observe")


@dataclass
class StepMemory:
    """Peaks (bytes) of one steady-state step, phase by phase; ``resident`` after it."""

    forward_backward: int
    optimizer_step: int
    observe: int
    resident: int

    @property
    def peak(self) -> int:
        return max(self.forward_backward, self.optimizer_step, self.observe)


@dataclass
class ModelResult:
    model: str
    params: int
    optimizer: str
    tokens_per_step: int
    planned_peak: dict[str, int] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    step_ms: dict[str, float] = field(default_factory=dict)
    observe_ms: dict[str, float] = field(default_factory=dict)
    log_row_ms: dict[str, float] = field(default_factory=dict)
    tracked_scalars: dict[str, int] = field(default_factory=dict)
    build_peak: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def bench_config(name: str, data: Path, device: str) -> TrialConfig:
    """The preset as a trial would run it, with the trainer's own tracker off (the bench keeps
    its own two) and a local Tiny Shakespeare."""
    return trial_preset(name).with_overrides(
        {
            "device": device,
            "data.path": str(data),
            "tracker.enabled": False,
            "steps": 100_000,  # the constant schedule never ends inside the bench
        }
    )


def tracker_config(cfg: TrialConfig, mode: str, eight_bit: bool) -> TrialConfig:
    """``cfg`` as the planner should see it for ``mode`` and the optimizer that really runs."""
    overrides: dict[str, Any] = {"optim.eight_bit": eight_bit, "tracker.enabled": mode != "none"}
    overrides["tracker.sample_per_tensor"] = SAMPLE_PER_TENSOR if mode == "sampled" else None
    return cfg.with_overrides(overrides)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> float:
    """Seconds ``fn`` takes with the device synchronised before and after."""
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


class PeakProbe:
    """Splits a step's peak at ``optimizer.step`` with the optimizer's own step hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.device = device
        self.before_step = 0
        self.during_step = 0
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        self.before_step = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def _post(self, *_: Any) -> None:
        self.during_step = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def step_memory(trial: Trial, trackers: list[SignTracker]) -> StepMemory | None:
    """Phase peaks of one more training step followed by the trackers' ``observe``."""
    device = trial.device
    if device.type != "cuda":
        return None
    probe = PeakProbe(trial.optimizer, device)
    try:
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        trial.train_step()
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for tracker in trackers:
            tracker.observe()
        synchronize(device)
        observe = torch.cuda.max_memory_allocated(device)
    finally:
        probe.remove()
    return StepMemory(
        probe.before_step, probe.during_step, observe, torch.cuda.memory_allocated(device)
    )


def card_bytes(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def build_tracker(trial: Trial, mode: str, result: ModelResult) -> SignTracker:
    """The tracker of ``mode`` ("full-flat": full, in the flat layout the lean one replaced, for
    timing side by side); the peak while it is built is recorded."""
    targets = resolve_targets(trial.model, [], "tracker.targets")
    sample = SAMPLE_PER_TENSOR if mode == "sampled" else None
    device = trial.device
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    layout = FlatSignTracker if mode == "full-flat" else SignTracker
    tracker = layout(targets, sample_per_tensor=sample)
    if device.type == "cuda":
        synchronize(device)
        result.build_peak[mode] = torch.cuda.max_memory_allocated(device)
    return tracker


def log_row_seconds(device: torch.device, tracker: SignTracker) -> float:
    """What the trainer asks the tracker at every logged row (median of three)."""
    return statistics.median(
        timed(device, lambda: (tracker.window_stats(), tracker.tensor_window_stats()))
        for _ in range(3)
    )


def time_steps(
    trial: Trial, trackers: dict[str, SignTracker], steps: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms of the training step and of each tracker's ``observe`` over ``steps`` steps."""
    step_times: list[float] = []
    observe_times: dict[str, list[float]] = {mode: [] for mode in trackers}
    for _ in range(steps):
        step_times.append(timed(trial.device, trial.train_step))
        for mode, tracker in trackers.items():
            observe_times[mode].append(timed(trial.device, tracker.observe))
    step_ms = statistics.median(step_times) * 1e3
    observe_ms = {mode: statistics.median(t) * 1e3 for mode, t in observe_times.items()}
    return {"none": step_ms, **{m: step_ms + o for m, o in observe_ms.items()}}, observe_ms


def plans(cfg: TrialConfig, vocab: int, eight_bit: bool) -> dict[str, int]:
    return {
        mode: estimate_memory(tracker_config(cfg, mode, eight_bit), vocab).peak for mode in MODES
    }


def full_fits(planned_full: int, device: torch.device) -> str | None:
    """Why full tracking is not attempted, or None when the planner fits it on the card."""
    total = card_bytes(device)
    if total is None or planned_full <= USABLE_FRACTION * total:
        return None
    return f"planner: {planned_full / GIB:.1f} GiB > {USABLE_FRACTION:.0%} of {total / GIB:.0f} GiB"


def bench_model(name: str, args: argparse.Namespace, run_root: Path) -> ModelResult:
    cfg = bench_config(name, args.data, args.device)
    trial = Trial(cfg, run_root / name, progress=False)
    eight_bit = trial.optimizer_name == "AdamW8bit"
    result = ModelResult(
        model=name,
        params=sum(p.numel() for p in trial.model.parameters()),
        optimizer=trial.optimizer_name,
        tokens_per_step=cfg.data.batch_size * min(cfg.data.seq_len, cfg.model.context_length),
        planned_peak=plans(cfg, trial.task.vocab_size, eight_bit),
    )
    for _ in range(args.warmup):
        trial.train_step()
    trial.task.evaluate(trial.model)  # the eval path on this device, once
    trial.model.train()
    record_memory(result, "none", step_memory(trial, []))
    trackers = {"sampled": build_tracker(trial, "sampled", result)}
    record_memory(result, "sampled", step_memory(trial, [trackers["sampled"]]))
    sampled_bytes = tracker_resident_bytes(trackers["sampled"])
    full = try_full_tracker(trial, result, "full")
    if full is not None:
        trackers["full"] = full
        record_memory(result, "full", step_memory(trial, [full]), less=sampled_bytes)
        if "full" in result.build_peak:
            result.build_peak["full"] -= sampled_bytes
        flat = try_full_tracker(trial, result, "full-flat")
        if flat is not None:
            trackers["full-flat"] = flat
    result.tracked_scalars = {mode: t.n_tracked for mode, t in trackers.items()}
    result.step_ms, result.observe_ms = time_steps(trial, trackers, args.steps)
    result.log_row_ms = {m: log_row_seconds(trial.device, t) * 1e3 for m, t in trackers.items()}
    return result


def try_full_tracker(trial: Trial, result: ModelResult, mode: str) -> SignTracker | None:
    """A full tracker where the planner fits it beside what is allocated; why not in
    ``result.skipped``."""
    needed = result.planned_peak["full"]
    if mode == "full-flat":
        targets = resolve_targets(trial.model, [], "tracker.targets")
        flat = sum(p.numel() * resident_bytes_per_scalar(p.dtype, fused=True) for _, p in targets)
        needed = flat + allocated(trial.device)
    why_not = full_fits(needed, trial.device)
    if why_not is None:
        try:
            return build_tracker(trial, mode, result)
        except torch.cuda.OutOfMemoryError:
            why_not = "out of memory building the tracker"
    result.skipped[mode] = why_not
    gc.collect()
    return None


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def tracker_resident_bytes(tracker: SignTracker | FlatSignTracker) -> int:
    """Bytes of the tracker's own buffers (views of the weights excluded), one per storage."""
    storages = {
        value.untyped_storage().data_ptr(): value.untyped_storage().nbytes()
        for value in tracker.resident_tensors()
    }
    return sum(storages.values())


def record_memory(
    result: ModelResult, mode: str, memory: StepMemory | None, *, less: int = 0
) -> None:
    """Store ``memory`` for ``mode``, ``less`` bytes (another mode's tracker, resident all
    along) taken off every figure."""
    if memory is not None:
        fields = {key: value - less for key, value in asdict(memory).items()}
        result.memory[mode] = {**fields, "peak": max(fields[k] for k in PHASES)}


def default_models(device: torch.device, data: Path) -> list[str]:
    """Issue 11's list plus the largest Table-1 model whose sampled-tracking plan fits."""
    models = list(REQUIRED_MODELS)
    total = card_bytes(device)
    if total is None:
        return models
    eight_bit = bitsandbytes_version() is not None
    fitting = [
        name
        for name in SCALE_CONFIGS
        if name != "scale-debug"
        and estimate_memory(
            tracker_config(bench_config(name, data, "cuda"), "sampled", eight_bit), 65
        ).peak
        <= USABLE_FRACTION * total
    ]
    if fitting and fitting[-1] not in models:
        models.append(fitting[-1])
    return models


def bitsandbytes_version() -> str | None:
    try:
        import bitsandbytes
    except ImportError:
        return None
    return str(bitsandbytes.__version__)


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "bitsandbytes": bitsandbytes_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1))
    return info


@contextlib.contextmanager
def released(device: torch.device) -> Iterator[None]:
    """Give every tensor of one model back before the next one is built."""
    try:
        yield
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def share(r: ModelResult, mode: str) -> str:
    """The tracker's share of the tracked step."""
    observe = r.observe_ms.get(mode)
    return "-" if observe is None else f"{observe / r.step_ms[mode] * 100:.1f}%"


def print_table(results: list[ModelResult]) -> None:
    nan = float("nan")
    print(
        f"{'model':<12}{'params':>8}{'optim':>10}{'step ms':>9}{'tok/s':>8}{'tok/s s':>8}"
        f"{'tok/s f':>8}{'obs s ms':>9}{'obs f ms':>9}{'f share':>8}{'flat ms':>9}{'fl share':>8}"
    )
    for r in results:
        if r.error:
            print(f"{r.model:<12} failed: {r.error}")
            continue
        tok = {m: r.tokens_per_step / ms * 1e3 for m, ms in r.step_ms.items()}
        print(
            f"{r.model:<12}{r.params / 1e6:>7.0f}M{r.optimizer:>10}{r.step_ms['none']:>9.1f}"
            f"{tok['none']:>8.0f}{tok['sampled']:>8.0f}{tok.get('full', nan):>8.0f}"
            f"{r.observe_ms['sampled']:>9.2f}{r.observe_ms.get('full', nan):>9.2f}"
            f"{share(r, 'full'):>8}{r.observe_ms.get('full-flat', nan):>9.2f}"
            f"{share(r, 'full-flat'):>8}"
        )
    print(
        f"\n{'model':<12}{'mode':>8}{'fwd+bwd':>9}{'optim':>9}{'observe':>9}{'build':>9}"
        f"{'peak':>9}{'planned':>9}{'error':>8}  (GiB)"
    )
    for r in results:
        for mode in (*MODES, "full-flat"):
            if mode in r.skipped:
                print(f"{r.model:<12}{mode:>8}  not run: {r.skipped[mode]}")
                continue
            m = r.memory.get(mode)
            if m is None:
                continue
            build = r.build_peak.get(mode)
            peak = max(m["peak"], build or 0)
            planned = r.planned_peak[mode]
            error = (planned - peak) / peak * 100
            print(
                f"{r.model:<12}{mode:>8}{gib(m['forward_backward']):>9}{gib(m['optimizer_step']):>9}"
                f"{gib(m['observe']):>9}{gib(build):>9}{gib(peak):>9}{gib(planned):>9}"
                f"{error:>+7.1f}%"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Tiny Shakespeare text file")
    parser.add_argument("--models", default=None, help="comma-separated scale-* presets")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("scale_gpu.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    models = args.models.split(",") if args.models else default_models(device, args.data)
    results: list[ModelResult] = []
    with tempfile.TemporaryDirectory() as run_root:
        for name in models:
            print(f"... {name}", flush=True)
            with released(device):
                try:
                    results.append(bench_model(name, args, Path(run_root)))
                except Exception as error:  # one model's failure is reported, the others run
                    results.append(
                        ModelResult(name, 0, "-", 0, error=f"{type(error).__name__}: {error}")
                    )
            args.out.write_text(
                json.dumps(
                    {"environment": environment(device), "results": [asdict(r) for r in results]},
                    indent=2,
                )
            )
    print_table(results)


if __name__ == "__main__":
    main()
