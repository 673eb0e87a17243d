"""``workers_per_trial`` in a spec and on the command line: the planner's per-device peak under
FSDP2, and what a sweep refuses until sharded trials run through Ray Train."""

from __future__ import annotations

from signlock.search_spaces.memory import COMMON_GPUS_GB, estimate_memory
from signlock.search_spaces.plan import vocab_size
from signlock.search_spaces.presets import trial_preset


def test_sharding_divides_state_and_adds_the_gather_buffers():
    cfg = trial_preset("scale-12.9b")
    estimate = estimate_memory(cfg, vocab_size(cfg))
    two = estimate.per_device_peak(2)
    # state (AdamW's moments: no 8-bit AdamW under FSDP2) and tracker halve, so do the
    # activations (half the batch each); plus two blocks' and the root's buffers
    expected = (
        (estimate.weights + estimate.gradients + estimate.optimizer_adamw + estimate.tracker) / 2
        + 2 * estimate.root_weights
        + 4 * estimate.largest_block
        + max(estimate.activations_used, estimate.tracker_observing) / 2
        + 64 * 2**20
    )
    assert two == int(expected)
    assert estimate.per_device_peak(1) == estimate.peak
    assert estimate.largest_block > 0 and estimate.per_device_peak(4) < two < estimate.peak
    assert [estimate.workers_needed(gb) for gb in COMMON_GPUS_GB] == [5, 3, 3, 2, 1]


def test_plan_with_two_workers_fits_80gb_and_one_worker_is_refused(cli_in_process, tmp_path):
    args = ["plan", "scale", "--set", "steps=10", "--gpu-memory", "80GB"]
    refused = cli_in_process(*args, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("or this GPU with --workers-per-trial 2")
    fits = cli_in_process(*args, "--workers-per-trial", "2", cwd=tmp_path)
    assert fits.returncode == 0, fits.stderr
    assert "per device, 2 FSDP workers per trial" in fits.stdout
    assert "FSDP workers (GPUs) one trial needs: 24 GB: 5, 40 GB: 3" in fits.stdout


def test_bad_worker_counts_and_sharded_sweeps_are_refused_in_one_line(cli_in_process, tmp_path):
    bad = cli_in_process("plan", "scale-smoke", "--workers-per-trial", "0", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("signlock: error: invalid --workers-per-trial=0: an integer >= 1")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nbase: synthetic-smoke\nresources: {workers_per_trial: 1.5}\n")
    fractional = cli_in_process("plan", str(spec), cwd=tmp_path)
    assert fractional.returncode == 2
    assert "spec.resources.workers_per_trial=1.5" in fractional.stderr
    sweep = cli_in_process(
        "sweep", "enhancement-smoke", "--workers-per-trial", "2", "--storage", "sw", cwd=tmp_path
    )
    assert sweep.returncode == 2
    assert "signlock train --workers-per-trial 2" in sweep.stderr
    assert not (tmp_path / "sw").exists()
