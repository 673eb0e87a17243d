"""Sweeps end to end: the real CLI, a real local Ray runtime, a real MLflow store or server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pytest
from mlflow.tracking import MlflowClient

from signlock.orchestrator.status import sweep_status
from signlock.search_spaces.files import load_spec
from signlock.trainables.trainer import run_trial


def sweep_args(spec: Path, name: str, root: Path, uri: str, *extra: str) -> list[str]:
    return ["sweep", str(spec), "--name", name, "--storage", str(root), "--tracking-uri", uri,
            "--quiet", *extra]  # fmt: skip


def sweep_runs(uri: str, sweep: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("signlock")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`signlock.sweep` = '{sweep}'"
    )
    parents = [r for r in runs if r.data.tags["signlock.kind"] == "sweep"]
    children = [r for r in runs if r.data.tags["signlock.kind"] == "trial"]
    return parents, children


def flips_dataset(root: Path, sweep: str) -> pd.DataFrame:
    dataset = pads.dataset(root / sweep / "flips", format="parquet", partitioning="hive")
    return dataset.to_table().to_pandas()


def histograms_by_point(root: Path, sweep: str) -> pd.DataFrame:
    """The sweep's K histograms with each trial named by its grid point (``0003`` of
    ``SWEEP-0003``: trials are named after their sweep), to compare two sweeps of one spec."""
    flips = flips_dataset(root, sweep).astype({"trial": str})
    flips["trial"] = flips["trial"].str.rsplit("-", n=1).str[-1]
    return flips.sort_values(["trial", "tensor", "k"], ignore_index=True)


def names_by_trial(root: Path, sweep: str) -> dict[str, str]:
    runs = root / sweep / "runs"
    return {d.name: json.loads((d / "config.json").read_text())["name"] for d in runs.iterdir()}


def check_sweep_outputs(uri: str, root: Path, sweep: str, n_trials: int) -> list:
    parents, children = sweep_runs(uri, sweep)
    assert len(parents) == 1 and len(children) == n_trials
    assert parents[0].info.status == "FINISHED"
    client = MlflowClient(uri)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        assert {"init.a_init", "seed", "regularizer.lam"} <= set(child.data.params)
        assert {"train_loss", "val_ppl", "flip_mean", "h_hat", "g_hat"} <= set(child.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"flips.parquet", "metrics.parquet", "summary.json"} <= artifacts
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
        assert steps == sorted(set(steps)), "a step was logged twice"
    flips = flips_dataset(root, sweep)
    trials = {c.data.tags["signlock.trial"] for c in children}
    assert set(flips["trial"]) == trials == {c.info.run_name for c in children}
    pooled = flips[flips["tensor"] == "__pooled__"].groupby("trial")["count"].sum()
    assert pooled.nunique() == 1 and pooled.iloc[0] > 10_000  # every trial tracks the same model
    return children


def test_local_sweep_logs_parent_and_child_runs_and_parquet(
    cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec = write_spec(tiny_spec())
    result = cli(*sweep_args(spec, "local", sweep_root, tracking_uri))
    assert result.returncode == 0, result.stderr[-3000:]
    check_sweep_outputs(tracking_uri, sweep_root, "local", 4)
    trials = pd.read_csv(sweep_root / "local" / "trials.csv")
    assert (trials["status"] == "TERMINATED").all() and len(trials) == 4

    summaries = pads.dataset(sweep_root / "local" / "summaries", partitioning="hive").to_table()
    summaries = summaries.to_pandas()
    expected = summaries[summaries["init.a_init"].astype(float) > 0.01]
    query = cli(
        "query", "--tracking-uri", tracking_uri, "--format", "json",
        "--filter", "params.a_init > 0.01 and metrics.val_ppl < 1e6",
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    rows = json.loads(query.stdout)
    assert len(rows) == 2
    assert sorted(r["metrics.val_ppl"] for r in rows) == pytest.approx(sorted(expected["val_ppl"]))
    none = cli("query", "--tracking-uri", tracking_uri, "--filter", "metrics.val_ppl < 0")
    assert none.returncode == 0 and "(no runs)" in none.stdout
    bad = cli("query", "--tracking-uri", tracking_uri, "--filter", "params.nope > 1")
    assert bad.returncode == 2 and "--filter" in bad.stderr

    status = cli("status", "local", "--storage", str(sweep_root))
    assert status.returncode == 0, status.stderr
    assert "terminated 4" in status.stdout and "best so far" in status.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"MLflow server at {url} did not come up")


def as_started_from_a_terminal() -> None:
    """Ctrl-C's SIGINT reaches a server started from a terminal, also when this test suite runs
    as a background job (a shell starts those with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_server(
    signlock_command: list[str], cwd: Path, backend_store_uri: str, artifacts: Path
) -> tuple[subprocess.Popen, str]:
    """A real `signlock server` on a free port, healthy: (its process, its URL)."""
    port = free_port()
    server = subprocess.Popen(
        [*signlock_command, "server", "--port", str(port), "--backend-store-uri",
         backend_store_uri, "--artifacts-destination", str(artifacts)],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_started_from_a_terminal,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    wait_for_health(uri, server)
    return server, uri


def test_sweep_logs_to_a_real_mlflow_server_over_http(
    tmp_path, cli, write_spec, sweep_root, tiny_spec, signlock_command
):
    server, uri = start_server(
        signlock_command, tmp_path, f"sqlite:///{tmp_path / 'server.db'}",
        tmp_path / "server-artifacts",
    )  # fmt: skip
    try:
        result = cli(*sweep_args(write_spec(tiny_spec()), "http", sweep_root, uri))
        assert result.returncode == 0, result.stderr[-3000:]
        children = check_sweep_outputs(uri, sweep_root, "http", 4)
        child = children[0]
        local = MlflowClient(uri).download_artifacts(child.info.run_id, "flips.parquet", tmp_path)
        run_dir = sweep_root / "http" / "runs" / child.data.tags["signlock.trial"]
        assert pd.read_parquet(local).equals(pd.read_parquet(run_dir / "flips.parquet"))
        assert list((tmp_path / "server-artifacts").rglob("flips.parquet"))  # stored by the server
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the sweep ended before the condition was reached"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def wait_for_ray_to_exit(timeout: float = 60) -> None:
    """The raylet and the trial workers (Tune's ``ImplicitFunc`` actors) of the killed driver
    are gone. (Ray's dashboard and runtime-env agents linger for a minute but write nothing.)"""
    deadline = time.monotonic() + timeout
    pattern = "raylet|ray::ImplicitFunc"
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "Ray processes outlived the killed driver"
        time.sleep(0.5)


def checkpoint_steps(sweep_dir: Path) -> dict[str, int]:
    steps = {}
    for sidecar in sweep_dir.glob("runs/*/checkpoints/latest.json"):
        steps[sidecar.parents[1].name] = json.loads(sidecar.read_text())["step"]
    return steps


def tune_terminated(sweep_dir: Path) -> set[str]:
    """Names of the trials Tune's persisted experiment state records as TERMINATED."""
    trials = sweep_status(sweep_dir).trials
    return set(trials.loc[trials["status"] == "TERMINATED", "name"])


def finished_trials(sweep_dir: Path) -> set[str]:
    return {p.name.removeprefix("trial=") for p in sweep_dir.glob("summaries/trial=*")}


def test_sigkill_driver_then_resume_finishes_every_trial_exactly_once(
    tmp_path, cli, write_spec, sweep_root, tracking_uri, tiny_spec, signlock_command
):
    spec_dict = tiny_spec(set={**tiny_spec()["set"], "steps": 160})
    spec = write_spec(spec_dict)
    sweep_dir = sweep_root / "killed"
    # One trial hangs once, after its step-60 checkpoint, so it is surely midway when the driver
    # dies; the others run on through the second slot.
    midway = "killed-0000"
    args = sweep_args(spec, "killed", sweep_root, tracking_uri, "--max-concurrent", "2",
                      "--inject-fault", f"{midway}:60:hang")  # fmt: skip
    driver = subprocess.Popen(
        [*signlock_command, *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def one_done_one_midway() -> bool:
        done = finished_trials(sweep_dir)
        return len(done) >= 1 and checkpoint_steps(sweep_dir).get(midway) == 60

    wait_until(one_done_one_midway, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    wait_for_ray_to_exit()  # the dead driver's trial workers must not write on after it
    done_before = finished_trials(sweep_dir)
    recorded_done = tune_terminated(sweep_dir)
    assert len(done_before) < 4

    resumed = cli("resume", "killed", "--storage", str(sweep_root), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    for trial_id in done_before:
        attempts = [json.loads(x) for x in (sweep_dir / "runs" / trial_id / "attempts.jsonl")
                    .read_text().splitlines()]  # fmt: skip
        # Recorded as finished by Tune before the kill: never started again. Finished but not yet
        # recorded (Tune saves its state periodically): restarted, but from its final step.
        assert len(attempts) == 1 if trial_id in recorded_done else attempts[-1]["from_step"] == 160
    resumed_from = [
        json.loads(line)["from_step"]
        for path in sweep_dir.glob("runs/*/attempts.jsonl")
        for line in path.read_text().splitlines()[1:]
    ]
    assert any(step >= 40 for step in resumed_from), "no trial resumed from a checkpoint"
    assert json.loads((sweep_dir / "runs" / midway / "attempts.jsonl").read_text()
                      .splitlines()[-1])["from_step"] == 60  # fmt: skip
    children = check_sweep_outputs(tracking_uri, sweep_root, "killed", 4)
    assert len({c.data.tags["signlock.trial"] for c in children}) == 4

    reference = cli(*sweep_args(spec, "reference", sweep_root, tracking_uri))
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_names = names_by_trial(sweep_root, "killed")
    reference_ids = {name: tid for tid, name in names_by_trial(sweep_root, "reference").items()}
    for trial_id, name in killed_names.items():
        ours = pd.read_parquet(sweep_dir / "runs" / trial_id / "flips.parquet")
        reference_name = name.replace("killed-", "reference-", 1)  # trials are named after sweeps
        theirs_dir = sweep_root / "reference" / "runs" / reference_ids[reference_name]
        pd.testing.assert_frame_equal(ours, pd.read_parquet(theirs_dir / "flips.parquet"))
        ours_summary = json.loads((sweep_dir / "runs" / trial_id / "summary.json").read_text())
        theirs_summary = json.loads((theirs_dir / "summary.json").read_text())
        for key in ("val_loss", "flip_mean", "h_hat", "g_hat", "final_train_loss"):
            assert ours_summary[key] == theirs_summary[key], key


def test_ctrl_c_stops_the_sweep_cleanly_and_resume_finishes_it(
    tmp_path, cli, write_spec, sweep_root, tracking_uri, tiny_spec, signlock_command
):
    spec = write_spec(tiny_spec(set={**tiny_spec()["set"], "steps": 160}))
    sweep_dir = sweep_root / "interrupted"
    args = sweep_args(spec, "interrupted", sweep_root, tracking_uri, "--max-concurrent", "2")
    driver = subprocess.Popen(
        [*signlock_command, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_until(lambda: any(s >= 40 for s in checkpoint_steps(sweep_dir).values()), driver)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr.decode()[-3000:]
    assert "signlock resume" in stderr.decode()
    terminal = stderr.decode()
    assert "WARNING" not in terminal and "Traceback" not in terminal, terminal[-3000:]
    parents, children = sweep_runs(tracking_uri, "interrupted")
    assert parents[0].info.status == "KILLED"
    # The trials that were running are interrupted, not failed, and say where they stopped.
    assert children and all(c.info.status in ("KILLED", "FINISHED") for c in children)
    assert all("signlock.error" not in c.data.tags for c in children)
    status = cli("status", str(sweep_dir))
    assert status.returncode == 0, status.stderr
    assert "interrupted (checkpoint at step" in status.stdout and "ERROR" not in status.stdout
    step_column = pd.read_csv(sweep_dir / "trials.csv", dtype=str)["step"]
    assert not step_column.str.contains(".", regex=False).any()  # integers stay integers

    resumed = cli("resume", str(sweep_dir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (pd.read_csv(sweep_dir / "trials.csv")["status"] == "TERMINATED").all()
    check_sweep_outputs(tracking_uri, sweep_root, "interrupted", 4)


def test_crashed_trial_is_retried_and_nan_trial_errors_while_the_rest_complete(
    tmp_path, cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec_path = write_spec(tiny_spec())
    spec = load_spec(str(spec_path))
    names = [f"faults-{i:04d}" for i in range(spec.n_trials())]  # named after the sweep
    crash, diverge = names[0], names[1]
    result = cli(
        *sweep_args(spec_path, "faults", sweep_root, tracking_uri),
        "--inject-fault",
        f"{crash}:25:raise",
        "--inject-fault",
        f"{diverge}:20:nan",
    )  # fmt: skip  25 is not a logged step (every 10): the fault fires at step 30
    assert result.returncode == 1, result.stderr[-3000:]
    trials = pd.read_csv(sweep_root / "faults" / "trials.csv").set_index("name")
    assert trials.loc[diverge, "status"] == "ERROR"
    assert (trials.drop(index=diverge)["status"] == "TERMINATED").all()

    parents, children = sweep_runs(tracking_uri, "faults")
    assert len(children) == 4 and parents[0].info.status == "FAILED"
    by_name = {c.info.run_name: c for c in children}
    assert by_name[diverge].info.status == "FAILED"
    assert "TrainingDivergedError" in by_name[diverge].data.tags["signlock.error"]
    assert by_name[crash].info.status == "FINISHED"
    assert "signlock.error" not in by_name[crash].data.tags

    crash_dir = sweep_root / "faults" / "runs" / by_name[crash].data.tags["signlock.trial"]
    attempts = [json.loads(x) for x in (crash_dir / "attempts.jsonl").read_text().splitlines()]
    assert [a["from_step"] for a in attempts] == [0, 20]  # retried from its step-20 checkpoint
    reference = run_trial(spec.trial_config(spec.grid_overrides()[0]), tmp_path / "ref",
                          progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(
        pd.read_parquet(crash_dir / "flips.parquet"),
        pd.read_parquet(tmp_path / "ref" / "flips.parquet"),
    )
    assert json.loads((crash_dir / "summary.json").read_text())["val_loss"] == reference["val_loss"]

    # The NaN was injected once: restarting the errored trial from scratch now finishes it,
    # in the same MLflow run.
    restarted = cli("resume", "faults", "--storage", str(sweep_root), "--restart-errored")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert (pd.read_csv(sweep_root / "faults" / "trials.csv")["status"] == "TERMINATED").all()
    diverge_dir = sweep_root / "faults" / "runs" / by_name[diverge].data.tags["signlock.trial"]
    last = json.loads((diverge_dir / "attempts.jsonl").read_text().splitlines()[-1])
    assert last["from_step"] == 0 and not (diverge_dir / "diverged.json").exists()
    children = check_sweep_outputs(tracking_uri, sweep_root, "faults", 4)
    assert all("signlock.error" not in c.data.tags for c in children)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"axes": {"init.a_init": {"grid": []}}}, "axes"),
        ({"axes": {"init.nope": {"grid": [1]}}}, "init.nope"),
        ({"axes": {"regularizer.lam": {"loguniform": [0.5, 0.1]}}}, "regularizer.lam"),
        ({"seeds": "zero"}, "seeds"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_specs_fail_before_ray_starts(
    tmp_path, cli_in_process, write_spec, sweep_root, tracking_uri, tiny_spec, change, field
):
    spec = write_spec(tiny_spec(**change))
    result = cli_in_process(*sweep_args(spec, "bad", sweep_root, tracking_uri))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signlock: error:") and field in lines[0]
    assert not sweep_root.exists() and not (tmp_path / "mlflow.db").exists()


def test_optuna_multi_objective_search_reports_a_pareto_set(
    cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec = tiny_spec(
        axes={
            "init.a_init": {"loguniform": [0.001, 0.03]},
            "regularizer.lam": {"loguniform": [1e-4, 0.5]},
        },
        seeds=[0],
        search="optuna",
        budget=4,
    )
    spec["set"]["init.template_rank"] = 2
    result = cli(*sweep_args(write_spec(spec), "nsga", sweep_root, tracking_uri))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto set" in result.stdout
    pareto = pd.read_csv(sweep_root / "nsga" / "pareto.csv")
    trials = pd.read_csv(sweep_root / "nsga" / "trials.csv")
    assert len(trials) == 4 and 1 <= len(pareto) <= 4
    sampled = trials["config.init.a_init"]
    assert sampled.between(0.001, 0.03).all() and sampled.nunique() == 4
    _, children = sweep_runs(tracking_uri, "nsga")
    assert len(children) == 4


def test_plan_prints_trial_count_without_running(cli_in_process, write_spec, sweep_root, tiny_spec):
    result = cli_in_process("plan", str(write_spec(tiny_spec())))
    assert result.returncode == 0, result.stderr
    assert "4" in result.stdout
    assert not sweep_root.exists()
