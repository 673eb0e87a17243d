"""A Ray cluster inside an allocation: what each node is told, checked without starting Ray."""

from __future__ import annotations

import itertools
import stat

import pytest

from signlock.cluster import ray_cluster
from signlock.cluster.ray_cluster import (
    NodeResources,
    Rendezvous,
    auth_environment,
    ensure_auth_token,
    short_temp_dir,
    worker_port_range,
)


def test_two_jobs_on_one_node_get_disjoint_worker_ports():
    ranges = sorted(worker_port_range(str(job)) for job in range(4150, 4250))  # 100 jobs
    for (_, high), (next_low, _) in itertools.pairwise(ranges):
        assert high < next_low
    assert all(1024 < low < high < 65536 for low, high in ranges)
    assert worker_port_range("4123_7") == worker_port_range("41237")  # array ids: digits only


def test_node_resources_come_from_the_allocation_not_the_machine():
    env = {"SLURM_CPUS_ON_NODE": "6", "CUDA_VISIBLE_DEVICES": "2,3", "SLURM_MEM_PER_NODE": "8192"}
    resources = NodeResources.from_slurm(env)
    assert resources == NodeResources(6, 2, 8192 * 2**20)
    assert resources.flags() == ["--num-cpus=6", "--num-gpus=2", f"--memory={8192 * 2**20}"]
    assert NodeResources.from_slurm({"SLURM_CPUS_ON_NODE": "1"}).num_gpus == 0


def test_the_sweeps_ray_token_is_private_and_stable(tmp_path):
    token = ensure_auth_token(tmp_path)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    assert ensure_auth_token(tmp_path).read_text() == token.read_text()
    assert auth_environment(token) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def test_ray_socket_paths_stay_short():
    # Unix socket paths are limited to 107 bytes; Ray nests session dirs and sockets below.
    assert len(str(short_temp_dir("123456789"))) <= 20


def test_a_requeued_job_does_not_read_its_previous_heads_address(tmp_path):
    first = Rendezvous(tmp_path, "77", restart=0)
    first.publish_head("10.0.0.1:6379")
    second = Rendezvous(tmp_path, "77", restart=1)
    assert second.head_file != first.head_file and not second.head_file.exists()
    assert first.head_address(timeout_s=1) == "10.0.0.1:6379"


def test_ports_we_choose_stay_out_of_the_jobs_worker_port_range(monkeypatch):
    """CI once drew the dashboard agent's port inside job 168's worker ports (47200–47599) and
    Ray refused to start the head; chosen ports now skip that range."""
    low, high = ray_cluster.worker_port_range("168")
    drawn = iter([low, high, (low + high) // 2, high + 1])
    monkeypatch.setattr(ray_cluster, "_probe_port", lambda host: next(drawn))
    assert ray_cluster.free_port(avoid=(low, high)) == high + 1
    monkeypatch.setattr(ray_cluster, "_probe_port", lambda host: low)
    with pytest.raises(RuntimeError, match="no free port"):
        ray_cluster.free_port(avoid=(low, high))
