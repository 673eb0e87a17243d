"""A Ray cluster inside one SLURM allocation: the only place signlock starts Ray nodes.

Ray's documented recipe (``ray start --head`` on the first node, ``ray start --address … --block``
on the others), with what Ray's users trip over on SLURM handled:

- ports: the GCS and dashboard-agent ports are probed free on each node, and worker
  ports come from a range chosen by the job id, so two sweeps sharing a node do not collide;
- resources: ``--num-cpus``/``--num-gpus``/``--memory`` come from the allocation (Ray would see
  the whole node);
- a short node-local ``--temp-dir`` (Unix socket paths are limited to 107 bytes; a temp dir on a
  shared filesystem breaks the raylet's sockets);
- token authentication: every node and the driver get ``RAY_AUTH_MODE=token`` and the same
  ``RAY_AUTH_TOKEN_PATH`` (a 0600 file in the sweep directory), so a joining node is never
  refused and authentication is never silently off.

The head publishes its address in a rendezvous file on the shared filesystem; workers wait for
it and leave when the head writes its "done" marker.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUTH_TOKEN_FILE = ".ray-auth-token"
WORKER_PORT_SPAN = 400
WORKER_PORT_BASE = 20000
START_TIMEOUT_S = 180.0


def ensure_auth_token(directory: Path) -> Path:
    """The sweep's Ray token file (created once, readable by its owner only)."""
    path = directory / AUTH_TOKEN_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def auth_environment(token_path: Path) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


FREE_PORT_ATTEMPTS = 100


def _probe_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_port(host: str = "", avoid: tuple[int, int] | None = None) -> int:
    """A port the OS reports free, outside ``avoid`` (an inclusive range, e.g. this job's worker
    ports: Ray refuses to start when a chosen port falls inside them)."""
    for _ in range(FREE_PORT_ATTEMPTS):
        port = _probe_port(host)
        if avoid is None or not avoid[0] <= port <= avoid[1]:
            return port
    raise RuntimeError(f"no free port outside {avoid} in {FREE_PORT_ATTEMPTS} attempts")


def worker_port_range(job_id: str) -> tuple[int, int]:
    """A per-job range of worker ports: jobs whose ids differ by less than 100 never overlap."""
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    start = WORKER_PORT_BASE + (int(digits) % 100) * WORKER_PORT_SPAN
    return start, start + WORKER_PORT_SPAN - 1


@dataclass(frozen=True)
class NodeResources:
    """What this node of the allocation may use."""

    num_cpus: int
    num_gpus: int
    memory_bytes: int | None

    @staticmethod
    def from_slurm(environ: dict[str, str] | None = None) -> NodeResources:
        env = dict(os.environ if environ is None else environ)
        cpus = int(env.get("SLURM_CPUS_ON_NODE") or os.cpu_count() or 1)
        visible = env.get("CUDA_VISIBLE_DEVICES", "")
        gpus = len([d for d in visible.split(",") if d.strip()]) if visible else 0
        if not gpus and env.get("SLURM_GPUS_ON_NODE", "").isdigit():
            gpus = int(env["SLURM_GPUS_ON_NODE"])
        mem_mb = env.get("SLURM_MEM_PER_NODE", "")
        memory = int(mem_mb) * 1024 * 1024 if mem_mb.isdigit() else None
        return NodeResources(cpus, gpus, memory)

    def flags(self) -> list[str]:
        flags = [f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}"]
        return flags + ([f"--memory={self.memory_bytes}"] if self.memory_bytes else [])


@dataclass(frozen=True)
class Rendezvous:
    """Files on the shared filesystem through which one job's nodes find each other. A requeued
    job keeps its id, so the restart count is part of the name."""

    directory: Path
    job_id: str
    restart: int = 0

    @property
    def _stem(self) -> str:
        return f"ray-{self.job_id}-{self.restart}"

    @property
    def head_file(self) -> Path:
        return self.directory / f"{self._stem}.head.json"

    @property
    def done_file(self) -> Path:
        return self.directory / f"{self._stem}.done"

    def publish_head(self, address: str) -> None:
        tmp = self.head_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"address": address}))
        tmp.replace(self.head_file)

    def head_address(self, timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while not self.head_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Ray head address in {self.head_file} after {timeout_s}s")
            time.sleep(0.5)
        return str(json.loads(self.head_file.read_text())["address"])


def node_ip() -> str:
    import ray.util

    return str(ray.util.get_node_ip_address())


def _ray_executable() -> str:
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


def short_temp_dir(job_id: str) -> Path:
    """Node-local and short: ``/tmp/slr-<job>`` keeps Ray's socket paths far below 107 bytes."""
    return Path("/tmp") / f"slr-{job_id}"


def _wait_for_port(host: str, port: int, process: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before listening")
        with socket.socket() as probe:
            probe.settimeout(1.0)
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not listen on {host}:{port} within {START_TIMEOUT_S}s")


def _common_flags(job_id: str, resources: NodeResources) -> list[str]:
    low, high = worker_port_range(job_id)
    return [
        "--block",
        f"--temp-dir={short_temp_dir(job_id)}",
        f"--min-worker-port={low}",
        f"--max-worker-port={high}",
        f"--dashboard-agent-listen-port={free_port(avoid=(low, high))}",
        *resources.flags(),
    ]


def start_head(
    job_id: str, resources: NodeResources, env: dict[str, str]
) -> tuple[subprocess.Popen[Any], str]:
    """``ray start --head --block`` on this node; returns the process and the GCS address."""
    ip = node_ip()
    port = free_port(avoid=worker_port_range(job_id))
    command = [
        _ray_executable(), "start", "--head", f"--node-ip-address={ip}", f"--port={port}",
        "--include-dashboard=false",
        *_common_flags(job_id, resources),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, start_new_session=True)
    _wait_for_port(ip, port, process, "the Ray head")
    return process, f"{ip}:{port}"


def join(
    address: str, job_id: str, resources: NodeResources, env: dict[str, str]
) -> subprocess.Popen[Any]:
    """``ray start --address … --block``: this node joins the head as a worker."""
    command = [
        _ray_executable(), "start", f"--address={address}", f"--node-ip-address={node_ip()}",
        *_common_flags(job_id, resources),
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, start_new_session=True)


def stop(process: subprocess.Popen[Any], timeout_s: float = 60.0) -> None:
    """Stop a ``ray start --block`` we started (it stops the node's daemons on SIGTERM)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_head(
    rendezvous: Rendezvous,
    resources: NodeResources,
    env: dict[str, str],
    entrypoint: Callable[[str], Any],
) -> Any:
    """Start the head, run ``entrypoint(address)`` on it (the Tune driver), then release the
    workers and stop the head."""
    process, address = start_head(rendezvous.job_id, resources, env)
    try:
        rendezvous.publish_head(address)
        return entrypoint(address)
    finally:
        rendezvous.done_file.touch()
        stop(process)
        shutil.rmtree(short_temp_dir(rendezvous.job_id), ignore_errors=True)


def run_worker(rendezvous: Rendezvous, resources: NodeResources, env: dict[str, str]) -> None:
    """Join the head and stay until the head is done (or the worker's Ray exits)."""
    process = join(rendezvous.head_address(), rendezvous.job_id, resources, env)
    try:
        while not rendezvous.done_file.exists() and process.poll() is None:
            time.sleep(1.0)
    finally:
        stop(process)
