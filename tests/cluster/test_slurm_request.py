"""--backend slurm flags, parsed and refused offline; the submitted batch script, pinned."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from signlock.cluster.slurm import sbatch_script
from signlock.cluster.slurm_request import SlurmRequest, parse_mem_mb, parse_time_minutes
from signlock.trainables.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("30", 30),
        ("05:30", 6),  # MM:SS, seconds round up as sbatch does
        ("01:00:00", 60),
        ("12:30:00", 750),
        ("2-00", 2880),
        ("1-02:03", 1563),
        ("1-00:00:30", 1441),
    ],
)
def test_slurm_time_formats(text, minutes):
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["1h", "", "00:00:00", "1:2:3:4", "-5", "ten"])
def test_an_unparsable_time_names_the_flag(text):
    with pytest.raises(ConfigError, match="--time"):
        parse_time_minutes(text)


@pytest.mark.parametrize(
    ("text", "mb"),
    [("16G", 16384), ("16000M", 16000), ("1T", 1048576), ("512", 512), ("8GB", 8192)],
)
def test_memory_sizes(text, mb):
    assert parse_mem_mb(text) == mb


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"nodes": 0}, "--nodes"),
        ({"gpus_per_node": -1}, "--gpus-per-node"),
        ({"cpus_per_node": 0}, "--cpus-per-node"),
        ({"mem": "lots"}, "--mem"),
        ({"time": "soon"}, "--time"),
        ({"mode": "mpi"}, "--slurm-mode"),
        ({"max_requeues": -1}, "--max-requeues"),
    ],
)
def test_bad_requests_name_the_flag(change, flag):
    with pytest.raises(ConfigError, match=flag):
        SlurmRequest(**{"partition": "debug", "time": "00:10:00", **change})


def test_a_request_round_trips_through_the_sweep_record():
    request = SlurmRequest("gpu", "01:00:00", nodes=2, setup=("module load cuda",))
    assert SlurmRequest.from_dict(request.to_dict()) == request


def test_multi_node_multi_gpu_batch_script_is_pinned():
    request = SlurmRequest(
        partition="gpu",
        time="2-00:00:00",
        nodes=4,
        gpus_per_node=8,
        cpus_per_node=64,
        mem="512G",
        account="lockin",
        qos="high",
        constraint="h100",
        setup=("module load cuda/12.4",),
        max_requeues=5,
    )
    sweep_dir = Path("/shared/sweeps/scale")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{sweep_dir}/.ray-auth-token"}
    script = sbatch_script(request, sweep_dir, "signlock-scale", auth)
    script = script.replace(sys.executable, "PYTHON")
    assert script == (GOLDEN / "scale_4x8gpu.sbatch").read_text()
