"""``signlock plan`` of the CNN family: samples, parameters, multiply-adds of reused Conv
kernels, and a memory prediction checked against torch's own allocation tracker."""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch.distributed._tools.mem_tracker import MemTracker

from signlock.search_spaces.memory import estimate_memory
from signlock.search_spaces.plan import model_parameters, plan_sweep, tokens_per_step
from signlock.search_spaces.presets import trial_preset
from signlock.search_spaces.spec import SweepSpec
from signlock.search_spaces.sweeps import sweep_preset
from signlock.trainables.errors import ConfigError
from signlock.trainables.trainer import Trial

SMOKE_SWEEP = "vision-cnn-lock-in-tail-smoke"


def test_signlock_plan_of_the_cnn_smoke_sweep(tmp_path):
    command = [sys.executable, "-m", "signlock.orchestrator.cli", "plan", SMOKE_SWEEP]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the profiler behind the tracker's figures stays quiet
    out = result.stdout
    assert f"sweep {SMOKE_SWEEP}: 2 trials" in out
    assert "samples per step: 16" in out and "total training samples: 3,200" in out
    assert "cnn 4-8 k3: 4.266k params (4,266), 2 trials" in out
    assert "cross-entropy of the 10 image classes" in out


def test_cnn_flops_count_every_position_a_kernel_sees():
    plan = plan_sweep(sweep_preset(SMOKE_SWEEP))
    assert plan.unit == "samples" and plan.n_trials == 2
    (trial, _) = plan.trials
    # conv 1→4 on 28², conv 4→8 on 14², head 8·7²→10: forward multiply-adds per image
    macs = 4 * 1 * 9 * 28**2 + 8 * 4 * 9 * 14**2 + 8 * 7**2 * 10
    assert trial.params == 4 * 9 + 4 + 8 * 4 * 9 + 8 + 8 * 49 * 10 + 10
    assert trial.flops == 6 * macs * 16 * 100
    cfg = trial_preset("vision-cnn")
    assert tokens_per_step(cfg) == 128 and model_parameters(cfg) > trial.params


def measured_peak(cfg, tmp_path) -> int:
    """Peak tensor memory of one steady-state CPU training step, by torch's MemTracker, plus
    the tracker's resident buffers (built before tracking started)."""
    trial = Trial(cfg, tmp_path / "run", progress=False)
    trial.train_step()
    memory = MemTracker()
    memory.track_external(trial.model, trial.optimizer)
    with memory:
        trial.train_step()
    peak = next(iter(memory.get_tracker_snapshot("peak").values()))["Total"]
    buffers = {
        value.untyped_storage().data_ptr(): value.untyped_storage().nbytes()
        for value in trial.tracker.resident_tensors()
    }
    weights = {p.untyped_storage().data_ptr() for p in trial.model.parameters()}
    return int(peak + sum(n for pointer, n in buffers.items() if pointer not in weights))


@pytest.mark.parametrize("channels", [[8, 16], [32, 64, 64]])
def test_predicted_cnn_peak_within_5_percent_of_torchs_allocations(channels, tmp_path):
    cfg = trial_preset("vision-cnn-smoke").with_overrides(
        {"device": "cpu", "model.channels": channels, "data.batch_size": 64}
    )
    predicted = estimate_memory(cfg, None)
    measured = measured_peak(cfg, tmp_path)
    assert predicted.activations == predicted.activations_checkpointed
    assert abs(predicted.cpu_peak - measured) <= 0.05 * measured, (predicted.cpu_peak, measured)


def test_a_sweep_mixing_trial_families_is_refused():
    presets = {"grid": ["vision-cnn-smoke", "synthetic-smoke"]}
    with pytest.raises(ConfigError) as caught:
        SweepSpec.from_dict(
            {"name": "mixed", "base": "vision-cnn-smoke", "axes": {"preset": presets}}
        )
    assert (caught.value.field, caught.value.value) == ("model.kind", "gpt")
    assert "'cnn'" in caught.value.allowed and "synthetic-smoke" in caught.value.allowed
