"""What a user gets wrong about compute is refused before anything is submitted or created:
one line naming the flag, exit 2 (the CLI's ``main`` called in-process, ``cli_in_process``: each
command is refused before it would create, submit or start anything)."""

from __future__ import annotations

import pytest

from tests.orchestrator.test_user_errors import one_line_error


def nothing_created(tmp_path) -> bool:
    return not (tmp_path / "signlock-runs").exists()


def test_a_trial_too_large_for_the_gpu_is_refused_by_plan_and_sweep(tmp_path, cli_in_process):
    planned = cli_in_process("plan", "scale", "--gpu-memory", "80GB")
    assert planned.returncode == 2 and "scale-12.9b" in one_line_error(planned)
    assert "fits GPUs of: 141 GB" in planned.stdout  # the plan is still printed
    swept = cli_in_process("sweep", "scale", "--gpu-memory", "80GB")
    line = one_line_error(swept)
    assert swept.returncode == 2 and "--gpu-memory" in line and "72.50 GiB" in line
    assert nothing_created(tmp_path)
    fits = cli_in_process("plan", "scale", "--gpu-memory", "141GB")
    assert fits.returncode == 0, fits.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--backend", "slurm", "--time", "00:10:00"], "--partition"),
        (["--backend", "slurm", "--partition", "debug"], "--time"),
        (["--backend", "slurm", "--partition", "debug", "--time", "1h"], "--time"),
        (["--backend", "slurm", "--partition", "debug", "--time", "10", "--nodes", "0"], "--nodes"),
        (["--partition", "debug"], "--partition"),  # a SLURM flag without --backend slurm
        (["--wait"], "--wait"),
    ],
)
def test_slurm_flags_are_checked_before_submission(tmp_path, cli_in_process, flags, named):
    result = cli_in_process("sweep", "enhancement-smoke", *flags)
    assert result.returncode == 2 and named in one_line_error(result)
    assert nothing_created(tmp_path)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--partition", "nope"], "--partition"),
        (["--partition", "debug", "--gpus-per-node", "1"], "--gpus-per-node"),
    ],
)
def test_the_live_cluster_refuses_what_it_cannot_run(
    tmp_path, cli_in_process, local_slurm, flags, named
):
    result = cli_in_process(
        "sweep", "enhancement-smoke", "--backend", "slurm", "--time", "00:10:00", *flags
    )
    assert result.returncode == 2 and named in one_line_error(result)
    assert nothing_created(tmp_path)


def test_without_sbatch_the_backend_is_refused(tmp_path, cli_in_process):
    result = cli_in_process(
        "sweep", "enhancement-smoke", "--backend", "slurm", "--partition", "debug",
        "--time", "00:10:00", env_extra={"PATH": "/nonexistent"},
    )  # fmt: skip
    assert result.returncode == 2 and "sbatch" in one_line_error(result)
    assert nothing_created(tmp_path)
