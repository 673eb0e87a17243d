"""An existing multi-node Ray cluster (`--address HOST:PORT`), on one machine: a head node with
no CPUs for trials and a worker node, started as separate `ray start --block` processes. The
worker's raylet is SIGKILLed mid-trial; a replacement worker joins; the trial is rescheduled
there and finishes from its checkpoint with the K histograms of an uninterrupted run, one MLflow
run per trial. Only the processes this test started are killed, by pid (never `ray stop`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from signlock.cluster.ray_cluster import auth_environment, ensure_auth_token, free_port
from tests.cluster.test_slurm_sweeps import midway, wait_for
from tests.orchestrator.test_sweep import check_sweep_outputs, histograms_by_point, sweep_args

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parent_of.items() if parent == current]
        found += kids
        frontier += kids
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class RayNodes:
    """`ray start --block` processes of one test cluster, stopped by pid."""

    def __init__(self, env: dict[str, str], temp_dir: Path) -> None:
        self.env, self.temp_dir = env, temp_dir
        self.processes: list[subprocess.Popen] = []
        self.port = free_port()

    def start(self, *flags: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", *flags],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def head(self) -> None:
        self.start("--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                   f"--temp-dir={self.temp_dir}", '--resources={"head": 1}')  # fmt: skip

    def worker(self) -> subprocess.Popen:
        return self.start(f"--address=127.0.0.1:{self.port}", "--num-cpus=2",
                          f"--dashboard-agent-listen-port={free_port()}",
                          '--resources={"worker": 1}')  # fmt: skip

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def ray_nodes(tmp_path) -> Iterator[RayNodes]:
    temp_dir = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))  # short socket paths
    env = {**os.environ, **auth_environment(ensure_auth_token(tmp_path))}
    env.pop("RAY_ADDRESS", None)
    nodes = RayNodes(env, temp_dir)
    try:
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def cluster_ready(nodes: RayNodes, cpus: int) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c",
         f"import ray; ray.init(address='127.0.0.1:{nodes.port}', log_to_driver=False); "
         "print(int(ray.cluster_resources().get('CPU', 0)))"],
        env=nodes.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return probe.returncode == 0 and probe.stdout.strip().splitlines()[-1:] == [str(cpus)]


def test_a_trial_survives_its_worker_nodes_raylet_being_killed(
    tmp_path, ray_nodes, cli, write_spec, sweep_root, tracking_uri, tiny_spec, signlock_command
):
    ray_nodes.head()
    first_worker = ray_nodes.worker()
    wait_for(lambda: cluster_ready(ray_nodes, 2), "the worker node to join", timeout=180)
    spec = write_spec(tiny_spec(set={**tiny_spec()["set"], "steps": 400}))
    address = f"127.0.0.1:{ray_nodes.port}"
    driver = subprocess.Popen(
        [*signlock_command, *sweep_args(spec, "multinode", sweep_root, tracking_uri,
                                        "--address", address, "--max-concurrent", "2")],
        cwd=tmp_path, env=ray_nodes.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    sweep_dir = sweep_root / "multinode"
    wait_for(lambda: midway(sweep_dir), "a trial midway on the worker")

    raylets = [p for p in children(first_worker.pid) if "raylet" in command_line(p)]
    assert raylets, "no raylet under the worker node"
    for pid in raylets:
        os.kill(pid, signal.SIGKILL)
    first_worker.wait(timeout=120)  # the node is gone
    ray_nodes.worker()  # a replacement joins; the failed trials are retried there

    _, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr[-3000:]
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    assert (trials["failures"] >= 1).any()  # Tune saw the node die under a trial
    resumed = [
        json.loads(line)["from_step"]
        for path in sweep_dir.glob("runs/*/attempts.jsonl")
        for line in path.read_text().splitlines()[1:]
    ]
    assert any(step >= 40 for step in resumed), "no trial resumed from its checkpoint"
    check_sweep_outputs(tracking_uri, sweep_root, "multinode", 4)  # one MLflow run per trial

    reference = cli(*sweep_args(spec, "reference", sweep_root, tracking_uri))
    assert reference.returncode == 0, reference.stderr[-3000:]

    pd.testing.assert_frame_equal(
        histograms_by_point(sweep_root, "multinode"), histograms_by_point(sweep_root, "reference")
    )
