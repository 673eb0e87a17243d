"""Sweeps on a real SLURM (cluster/local_slurm.sh): submitit → sbatch → Ray → Tune → MLflow."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signlock.cluster import slurm
from signlock.orchestrator.submit import cancel_sweep
from signlock.trainables.records import SweepRecord
from tests.orchestrator.test_sweep import (
    check_sweep_outputs,
    checkpoint_steps,
    histograms_by_point,
    sweep_runs,
    wait_for_ray_to_exit,
)

pytestmark = pytest.mark.slow


def slurm_flags(partition: str) -> list[str]:
    return ["--backend", "slurm", "--partition", partition, "--time", "00:15:00",
            "--cpus-per-node", "2"]  # fmt: skip


def submitted_job(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("submitted SLURM job"))
    return line.split()[3]


def wait_for(predicate, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_for_job_end(job_id: str, timeout: float = 300) -> slurm.JobState:
    wait_for(lambda: slurm.job_state(job_id).finished, f"SLURM job {job_id} to end", timeout)
    return slurm.job_state(job_id)


def midway(sweep_dir: Path) -> bool:
    """Some trial has checkpointed at step 40 or later and not every trial has finished."""
    done = list(sweep_dir.glob("summaries/trial=*"))
    return len(done) < 4 and any(step >= 40 for step in checkpoint_steps(sweep_dir).values())


def long_tiny_spec(tiny_spec) -> dict:
    return tiny_spec(set={**tiny_spec()["set"], "steps": 400})


def test_smoke_sweep_on_slurm_logs_one_parent_and_one_child_per_trial(
    local_slurm, cli, sweep_root, tracking_uri
):
    result = cli(
        "sweep", "enhancement-smoke", *slurm_flags(local_slurm), "--wait",
        "--storage", str(sweep_root), "--tracking-uri", tracking_uri,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = submitted_job(result.stdout)
    assert f"SLURM job {job_id}: completed" in result.stderr
    parents, children = sweep_runs(tracking_uri, "enhancement-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    sweep_dir = sweep_root / "enhancement-smoke"
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 3 and (trials["status"] == "TERMINATED").all()
    assert SweepRecord.read(sweep_dir).jobs == (job_id,)

    status = cli("status", "enhancement-smoke", "--storage", str(sweep_root))
    assert status.returncode == 0, status.stderr
    assert f"SLURM job {job_id}: completed" in status.stdout and "terminated 3" in status.stdout
    logs = cli("logs", "enhancement-smoke", "--storage", str(sweep_root))
    assert logs.returncode == 0 and "Job completed successfully" in logs.stdout


def test_a_cancelled_slurm_sweep_resumes_to_the_histograms_of_an_uninterrupted_one(
    local_slurm, cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec = write_spec(long_tiny_spec(tiny_spec))
    common = ["--storage", str(sweep_root), "--tracking-uri", tracking_uri]
    submitted = cli("sweep", str(spec), "--name", "cancelled", *slurm_flags(local_slurm), *common)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted_job(submitted.stdout)
    sweep_dir = sweep_root / "cancelled"
    wait_for(lambda: midway(sweep_dir), "a trial midway")

    cancelled = cli("cancel", "cancelled", "--storage", str(sweep_root))
    assert cancelled.returncode == 0, cancelled.stderr
    assert wait_for_job_end(job_id).state == "CANCELLED"
    wait_for_ray_to_exit()  # the cancelled job's trial workers write no more
    parents, _ = sweep_runs(tracking_uri, "cancelled")
    assert parents[0].info.status == "KILLED"
    assert len(list(sweep_dir.glob("summaries/trial=*"))) < 4

    resumed = cli("resume", "cancelled", "--storage", str(sweep_root), "--backend", "slurm",
                  "--wait")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(SweepRecord.read(sweep_dir).jobs) == 2  # the first job's request reused
    check_sweep_outputs(tracking_uri, sweep_root, "cancelled", 4)  # no duplicate runs

    reference = cli("sweep", str(spec), "--name", "reference", "--quiet", *common)
    assert reference.returncode == 0, reference.stderr[-3000:]

    pd.testing.assert_frame_equal(
        histograms_by_point(sweep_root, "cancelled"), histograms_by_point(sweep_root, "reference")
    )


def requeued_midway(
    interrupt: list[str], name: str, partition: str, cli, spec: Path, sweep_root: Path, uri: str
) -> tuple[str, Path, list]:
    """Submit ``spec``, run ``interrupt + [job id]`` once a trial is midway, and check the job
    requeued and completed the sweep by itself: (job id, sweep directory, child runs)."""
    submitted = cli(
        "sweep", str(spec), "--name", name, *slurm_flags(partition),
        "--storage", str(sweep_root), "--tracking-uri", uri,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = submitted_job(submitted.stdout)
    sweep_dir = sweep_root / name
    wait_for(lambda: midway(sweep_dir), "a trial midway")

    subprocess.run([*interrupt, job_id], check=True)
    state = wait_for_job_end(job_id, timeout=600)
    assert state.state == "COMPLETED" and state.restarts >= 1
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    return job_id, sweep_dir, check_sweep_outputs(uri, sweep_root, name, 4)


def test_a_requeued_slurm_sweep_completes_on_its_own(
    local_slurm, cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec = write_spec(long_tiny_spec(tiny_spec))
    _, sweep_dir, children = requeued_midway(
        ["scontrol", "requeue"], "requeued", local_slurm, cli, spec, sweep_root, tracking_uri
    )
    attempts = [len(p.read_text().splitlines()) for p in sweep_dir.glob("runs/*/attempts.jsonl")]
    assert max(attempts) >= 2  # the trial running at the requeue started again, in the new job
    assert {c.info.status for c in children} == {"FINISHED"}
    assert (
        MlflowClient(tracking_uri)
        .get_run(sweep_runs(tracking_uri, "requeued")[0][0].info.run_id)
        .info.status
        == "FINISHED"
    )


def test_array_mode_runs_one_task_per_trial_and_a_resubmission_only_the_unfinished(
    local_slurm, cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec = write_spec(long_tiny_spec(tiny_spec))
    common = ["--storage", str(sweep_root), "--tracking-uri", tracking_uri]
    array = ["--slurm-mode", "array", "--array-parallelism", "1", "--cpus-per-node", "1"]
    submitted = cli("sweep", str(spec), "--name", "array", *slurm_flags(local_slurm)[:-2],
                    *array, *common)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    sweep_dir = sweep_root / "array"

    def one_done_one_midway() -> bool:
        done = {p.name.removeprefix("trial=") for p in sweep_dir.glob("summaries/trial=*")}
        steps = checkpoint_steps(sweep_dir)
        return len(done) == 1 and any(s >= 40 for t, s in steps.items() if t not in done)

    wait_for(one_done_one_midway, "one trial finished and one midway")
    cancel_sweep(sweep_dir)  # in-process: the CLI's start-up could outlast the running trial
    finished_first = {p.name.removeprefix("trial=") for p in sweep_dir.glob("summaries/trial=*")}

    resumed = cli("resume", "array", "--storage", str(sweep_root), "--backend", "slurm", "--wait")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    attempts = {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sweep_dir.glob("runs/*/attempts.jsonl")
    }
    for name in finished_first:
        assert len(attempts[name]) == 1  # not run again
    assert any(a[-1]["from_step"] >= 40 for a in attempts.values())  # resumed, not restarted
    check_sweep_outputs(tracking_uri, sweep_root, "array", 4)

    reference = cli("sweep", str(spec), "--name", "reference", "--quiet", *common)
    assert reference.returncode == 0, reference.stderr[-3000:]

    pd.testing.assert_frame_equal(
        histograms_by_point(sweep_root, "array"), histograms_by_point(sweep_root, "reference")
    )

    def val_ppl_by_point(sweep: str) -> pd.Series:
        table = pd.read_csv(sweep_root / sweep / "trials.csv")
        table["point"] = table["name"].str.rsplit("-", n=1).str[-1]  # named after the sweep
        return table.set_index("point")["val_ppl"].sort_index()

    pd.testing.assert_series_equal(val_ppl_by_point("array"), val_ppl_by_point("reference"))


def test_usr2_before_the_time_limit_requeues_the_job_through_submitit(
    local_slurm, cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    """SLURM sends USR2 ahead of the time limit (``--signal=USR2@90``); submitit then calls the
    job's ``checkpoint`` and requeues it; the requeued job continues the sweep."""
    spec = write_spec(long_tiny_spec(tiny_spec))
    job_id, sweep_dir, _ = requeued_midway(
        ["scancel", "--signal=USR2"], "usr2", local_slurm, cli, spec, sweep_root, tracking_uri
    )
    log = "".join(path.read_text() for path in slurm.log_files(sweep_dir, job_id))
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log  # submitit's path
