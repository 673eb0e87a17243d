"""The memory planner against torch's own allocation tracker on CPU, and pinned for the large
models of C.5 (no allocation needed to plan them)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker

from signlock.search_spaces.memory import (
    MemoryEstimate,
    estimate_memory,
    parse_memory_size,
)
from signlock.search_spaces.plan import vocab_size
from signlock.search_spaces.presets import trial_preset
from signlock.trainables.config import TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.trainer import Trial


def cpu_config(preset: str) -> TrialConfig:
    """The preset's model, batch and tracker; text presets read the offline synthetic corpus with
    their own vocabulary and sequence length instead of Tiny Shakespeare. AdamW (the trainer's
    optimizer on CPU)."""
    base = trial_preset(preset)
    offline = {}
    if base.data.dataset != "synthetic":
        offline = {
            "data.dataset": "synthetic",
            "data.path": None,
            "data.synthetic_vocab": vocab_size(base),
            "data.synthetic_seq_len": min(base.data.seq_len, base.model.context_length),
        }
    overrides = {"device": "cpu", "data.synthetic_sequences": 64, "optim.eight_bit": False}
    return base.with_overrides({**overrides, **offline})


def measured_peak(cfg: TrialConfig, tmp_path) -> int:
    """Peak tensor memory of one steady-state training step (weights, gradients, optimizer
    state, activations, the tracker's observe) by torch's MemTracker, plus the tracker's resident
    buffers (built before tracking started)."""
    trial = Trial(cfg, tmp_path / "run", progress=False)
    trial.train_step()  # the optimizer state exists from here on, as in every later step
    memory = MemTracker()
    memory.track_external(trial.model, trial.optimizer)
    with memory:
        trial.train_step()
    peak = next(iter(memory.get_tracker_snapshot("peak").values()))["Total"]
    weights = {p.untyped_storage().data_ptr() for p in trial.model.parameters()}
    buffers = {
        value.untyped_storage().data_ptr(): value.untyped_storage().nbytes()
        for value in trial.tracker.resident_tensors()
    }  # one entry per storage
    resident = sum(n for pointer, n in buffers.items() if pointer not in weights)
    return int(peak + resident)


@pytest.mark.parametrize("preset", ["charlm", "synthetic-lm", "scale-31m"])
def test_predicted_peak_within_15_percent_of_torchs_allocations(preset, tmp_path):
    cfg = cpu_config(preset)
    predicted = estimate_memory(cfg, cfg.data.synthetic_vocab).cpu_peak
    measured = measured_peak(cfg, tmp_path)
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


MIB = 2**20


def test_scale_1_2b_components_are_pinned():
    """By hand: d 2048, 24 layers, d_ff 8192, V 65, 64 tokens, bf16 with fp32 LayerNorms (49 of
    them, 4096 parameters each), 2048 sampled scalars in each of the 147 matrices."""
    cfg = trial_preset("scale-1.2b")
    estimate = estimate_memory(cfg, vocab_size(cfg))
    assert estimate == pytest.approx(
        MemoryEstimate(
            params=1_208_557_568,  # 24·(4d² + 2·d·d_ff + 4d) + (65 + 64 + 65)·d + 2d
            weights=2_417_516_544,  # 2·(params − 200,704) + 4·200,704
            gradients=2_417_516_544,
            optimizer_adamw=4_835_033_088,
            optimizer_adamw8bit=2_454_882_560,  # params · (2 + 8/256)
            activations=114_312_576,  # 64 · (24·73,872 + 12,556 + 650)
            activations_checkpointed=11_864_448,  # 64 · (24·2·2048 + 73,872 + 13,206)
            tracked_scalars=301_056,
            tracker=301_056 * (2 + 8),  # state, K and int64 index per sampled scalar
            tracker_observing=estimate.tracker_observing,
            tracker_on_cpu=estimate.tracker_on_cpu,
            tracker_observing_on_cpu=estimate.tracker_observing_on_cpu,
            eight_bit=True,
            checkpointing=True,
            largest_block=100_696_064,  # 2·(4d² + 2·d·d_ff) + 4·4d: bf16 matrices, fp32 norms
            root_weights=811_008,  # 2·(65 + 64 + 65)·d + 4·2d: embeddings, head, final norm
        )
    )


def test_scale_12_9b_fits_only_the_141_gb_gpu():
    cfg = trial_preset("scale-12.9b")
    estimate = estimate_memory(cfg, vocab_size(cfg))
    assert estimate.params == 12_886_753_280
    assert estimate.weights == estimate.gradients == 25_775_620_096
    assert estimate.optimizer == 26_176_217_600  # 8-bit AdamW (C.5)
    assert estimate.fitting_gpus() == [141]
    with_adamw = estimate_memory(cfg.with_overrides({"optim.eight_bit": False}), 65)
    assert with_adamw.optimizer == 2 * with_adamw.weights and with_adamw.fitting_gpus() == [141]


@pytest.mark.parametrize(
    ("text", "gib"), [("80GB", 80), ("24G", 24), ("141GiB", 141), ("40960MB", 40)]
)
def test_gpu_memory_sizes(text, gib):
    assert parse_memory_size(text) == gib * 2**30


def test_a_bad_gpu_memory_size_names_the_flag():
    with pytest.raises(ConfigError, match="--gpu-memory"):
        parse_memory_size("lots")


@pytest.mark.parametrize("sample", [None, 300])
def test_gpu_tracker_bytes_match_torchs_allocations_of_the_torch_layout(sample):
    """The GPU's torch backend run on CPU, where torch's allocation tracker sees every buffer:
    construction, then one observation in which every scalar's code changes (the worst case).
    Same ops and dtypes as on CUDA; bench/scale_gpu.py checks the figure on a GPU."""
    from signlock.search_spaces.memory import gpu_tracker_bytes
    from signlock.trainables.tracker import SignTracker

    targets = [
        ("a", torch.nn.Parameter(0.02 + torch.rand(300, 200, dtype=torch.bfloat16))),
        ("b", torch.nn.Parameter(0.02 + torch.rand(50_000))),
        ("c", torch.nn.Parameter(-0.02 - torch.rand(64, 64, dtype=torch.bfloat16))),
    ]
    memory = MemTracker()
    memory.track_external(*(p for _, p in targets))
    with memory:
        tracker = SignTracker(targets, sample_per_tensor=sample, backend="torch")
        with torch.no_grad():
            for _, p in targets:
                p.mul_(-1)
        tracker.observe()
    weights = sum(p.nbytes for _, p in targets)
    measured = next(iter(memory.get_tracker_snapshot("peak").values()))["Total"] - weights
    predicted = gpu_tracker_bytes(targets, sample)
    predicted = predicted.resident + predicted.observing
    assert abs(predicted - measured) <= 0.1 * measured, (predicted, measured)


def test_scale_12_9b_with_every_weight_tracked_fits_the_141_gb_gpu():
    """Issue 18: the lean layout's two bytes per tracked scalar let the 12.9B model track every
    matrix weight exactly on one 141 GB GPU (the flat layout's 38 needed ~450 GiB)."""
    cfg = trial_preset("scale-12.9b").with_overrides({"tracker.sample_per_tensor": None})
    estimate = estimate_memory(cfg, vocab_size(cfg))
    assert estimate.tracked_scalars > 12_000_000_000
    assert estimate.tracker == 2 * estimate.tracked_scalars
    assert estimate.fitting_gpus() == [141]
