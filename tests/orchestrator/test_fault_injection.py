"""Faults driven with real processes: two drivers on one sweep, SIGKILL, a corrupt newest
checkpoint, Tune state lost to a full disk, planted pickles, requests that can never be met,
and what a local sweep's Ray listens on."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from signlock.search_spaces.files import load_spec
from signlock.trainables.trainer import run_trial
from tests.conftest import fill_disk
from tests.orchestrator.test_sweep import (
    check_sweep_outputs,
    checkpoint_steps,
    finished_trials,
    sweep_args,
    wait_for_ray_to_exit,
    wait_until,
)


def attempts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]


def descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    found = [int(child) for child in children.split()]
    return found + [grandchild for child in found for grandchild in descendants(child)]


def listening_addresses(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every listening TCP socket of ``pids``, from ``ss -ltnp``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append((line.split()[3], line.split('"')[1] if '"' in line else "?"))
    return found


def test_one_driver_per_sweep_a_dead_drivers_lock_taken_over_lost_tune_state_and_bad_checkpoint(
    tmp_path, cli, write_spec, sweep_root, tracking_uri, tiny_spec, signlock_command
):
    spec_path = write_spec(tiny_spec(set={**tiny_spec()["set"], "steps": 160}))
    sweep_dir = sweep_root / "locked"
    midway = "locked-0000"  # hangs once after its step-100 checkpoint: surely midway when killed
    args = sweep_args(spec_path, "locked", sweep_root, tracking_uri, "--max-concurrent", "2",
                      "--inject-fault", f"{midway}:100:hang")  # fmt: skip
    driver = subprocess.Popen([*signlock_command, *args], cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_until(lambda: len([s for s in checkpoint_steps(sweep_dir).values() if s >= 40]) >= 1,
               driver)  # fmt: skip

    # A second driver is refused, naming the first; nothing of the sweep changes.
    second = cli("resume", "locked", "--storage", str(sweep_root), "--quiet", timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert re.search(rf"already being driven by \S+ pid {driver.pid} since \S+", second.stderr)
    assert len(second.stderr.strip().splitlines()) == 1

    # The sweep's own Ray listens on 127.0.0.1 only, with token authentication set by signlock.
    tree = {driver.pid, *descendants(driver.pid)}
    addresses = listening_addresses(tree)
    assert addresses, "the sweep's Ray listens on nothing?"
    loopback = re.compile(r"(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):")
    exposed = [address for address in addresses if not loopback.match(address[0])]
    assert not exposed, exposed
    gcs = [pid for pid in tree if "gcs_server" in Path(f"/proc/{pid}/cmdline").read_text()]
    environ = Path(f"/proc/{gcs[0]}/environ").read_bytes().split(b"\0")
    assert b"RAY_AUTH_MODE=token" in environ

    wait_until(lambda: len(finished_trials(sweep_dir)) >= 1
               and checkpoint_steps(sweep_dir).get(midway) == 100, driver)  # fmt: skip
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the trials it runs, at once
    driver.wait()
    wait_for_ray_to_exit()

    # The newest checkpoint of a trial stopped midway is truncated: it resumes from the one
    # before it, and says so.
    run_dir = sweep_dir / "runs" / midway
    previous = json.loads((run_dir / "checkpoints" / "previous.json").read_text())["step"]
    latest = run_dir / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])
    # And Tune's own state is lost, as a full disk leaves it: 0 bytes. The sweep is rebuilt from
    # signlock's records, never started over: finished trials are not rerun.
    done_before = finished_trials(sweep_dir)
    for state in sweep_dir.glob("experiment_state-*.json"):
        state.write_bytes(b"")

    resumed = cli("resume", "locked", "--storage", str(sweep_root))  # with the progress bar
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    taken_over = rf"taking over sweep locked from \S+ pid {driver.pid} since \S+, which is gone"
    assert re.search(taken_over, resumed.stderr)
    assert "rebuilding the sweep from signlock's records" in resumed.stderr
    for name in done_before:
        assert len(attempts(sweep_dir / "runs" / name)) == 1
    assert "640/640" in resumed.stderr  # 4 trials x 160 steps: earlier ones counted as done
    last = attempts(run_dir)[-1]
    assert last["from_step"] == previous and last["resumed_from"] == "previous.pt"
    assert "latest.pt" in last["skipped"][0]
    children = check_sweep_outputs(tracking_uri, sweep_root, "locked", 4)
    tags = {c.data.tags["signlock.trial"]: c.data.tags for c in children}
    assert "checkpoints/previous.pt" in tags[midway]["signlock.resumed_from"]

    spec = load_spec(str(spec_path))
    index = int(midway.rsplit("-", 1)[1])
    reference = spec.trial_config(spec.grid_overrides()[index])
    run_trial(reference, tmp_path / "reference", progress=False)
    pd.testing.assert_frame_equal(
        pd.read_parquet(run_dir / "flips.parquet"),
        pd.read_parquet(tmp_path / "reference" / "flips.parquet"),
    )


def malicious_pickle(marker: Path) -> bytes:
    class Plant:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Plant())


def test_read_only_commands_never_unpickle_and_resume_refuses_state_others_could_write(
    tmp_path, cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec = tiny_spec(axes={"init.a_init": {"grid": [0.02]}}, seeds=[0, 1])
    result = cli(*sweep_args(write_spec(spec), "planted", sweep_root, tracking_uri))
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = sweep_root / "planted"
    marker = tmp_path / "code-ran"
    payload = malicious_pickle(marker)
    (sweep_dir / "tuner.pkl").write_bytes(payload)
    for path in sweep_dir.glob("experiment_state-*.json"):
        state = json.loads(path.read_text())
        for entry in state["trial_data"]:
            trial = json.loads(entry[0])
            for key, value in trial.items():
                if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16,}", value):
                    trial[key] = payload.hex()  # where Tune keeps cloudpickled fields
            entry[0] = json.dumps(trial)
        path.write_text(json.dumps(state))

    storage = ["--storage", str(sweep_root)]
    for command in (["status", "planted", *storage], ["query", "--tracking-uri", tracking_uri],
                    ["analyze", "planted", *storage], ["report", "planted", *storage]):  # fmt: skip
        ran = cli(*command)
        assert ran.returncode == 0, (command, ran.stderr[-2000:])
        assert not marker.exists(), f"{command[0]} unpickled a planted file"

    (sweep_dir / "tuner.pkl").chmod(0o664)
    refused = cli("resume", "planted", *storage, "--quiet")
    assert refused.returncode == 2 and "writable by group or others" in refused.stderr
    (sweep_dir / "tuner.pkl").chmod(0o644)
    os.chown(sweep_dir / "tuner.pkl", 65534, 65534)
    refused = cli("resume", "planted", *storage, "--quiet")
    assert refused.returncode == 2 and "owned by uid 65534" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert oct(sweep_dir.stat().st_mode & 0o777) == "0o750"


def no_sweep_created(sweep_root: Path, tracking_uri: str) -> bool:
    store = Path(tracking_uri.removeprefix("sqlite:///"))
    if store.exists():
        experiment = MlflowClient(tracking_uri).get_experiment_by_name("signlock")
        if experiment is not None and MlflowClient(tracking_uri).search_runs(
            [experiment.experiment_id]
        ):
            return False
    return not sweep_root.exists() or not any(sweep_root.glob("*/signlock-sweep.json"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--gpus-per-trial", "1"], "invalid --gpus-per-trial=1.0: at most 0"),
        (["--cpus-per-trial", "64"], "invalid --cpus-per-trial=64.0: at most"),
        (["--address", "127.0.0.1:1", "--connect-timeout", "3"],
         "invalid --address='127.0.0.1:1': a Ray cluster answering within 3 s"),
    ],
)  # fmt: skip
def test_requests_that_can_never_be_met_are_refused_before_anything_is_created(
    cli, write_spec, sweep_root, tracking_uri, tiny_spec, flags, expected
):
    started = time.monotonic()
    result = cli(*sweep_args(write_spec(tiny_spec()), "never", sweep_root, tracking_uri), *flags,
                 timeout=180)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 120
    assert no_sweep_created(sweep_root, tracking_uri)
    assert not list(sweep_root.glob(".ray-start-*")) if sweep_root.exists() else True


def test_bad_storage_names_and_fault_targets_are_one_line_before_mlflow(
    tmp_path, cli, write_spec, sweep_root, tracking_uri, tiny_spec
):
    spec = write_spec(tiny_spec())
    cases = [
        (["--storage", "/proc/nope"], "invalid --storage='/proc/nope'"),
        (["--name", "../../escaped"], "invalid --name='../../escaped'"),
        (["--inject-fault", "no-such-trial:20"], "invalid --inject-fault='no-such-trial'"),
    ]
    for flags, expected in cases:
        args = ["sweep", str(spec), "--tracking-uri", tracking_uri, "--quiet"]
        if "--storage" not in flags:
            args += ["--storage", str(sweep_root)]
        result = cli(*args, *flags)
        assert result.returncode == 2, (flags, result.stderr[-2000:])
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, flags
    assert not (tmp_path / "escaped").exists() and no_sweep_created(sweep_root, tracking_uri)


def test_unknown_sweeps_and_exclusive_flags_are_refused_in_one_line(cli_in_process, sweep_root):
    for command in ("status", "resume"):
        result = cli_in_process(command, "no-such", "--storage", str(sweep_root))
        assert result.returncode == 2
        expected = f"signlock: error: not found: no sweep no-such under {sweep_root}"
        assert result.stderr.strip() == expected
    both = cli_in_process("resume", "x", "--restart-errored", "--skip-errored")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_a_full_disk_mid_sweep_then_resume_finishes_every_trial_from_its_checkpoint(
    tmp_path, cli, write_spec, tiny_spec, signlock_command, small_tmpfs
):
    storage, uri = small_tmpfs / "sweeps", f"sqlite:///{small_tmpfs / 'mlflow.db'}"
    spec = tiny_spec(
        axes={"init.a_init": {"grid": [0.02]}}, set={**tiny_spec()["set"], "steps": 200}
    )
    args = sweep_args(write_spec(spec), "full", storage, uri, "--max-concurrent", "2")
    driver = subprocess.Popen([*signlock_command, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    sweep_dir = storage / "full"
    wait_until(lambda: any(s >= 20 for s in checkpoint_steps(sweep_dir).values()), driver)
    filler = fill_disk(small_tmpfs)
    _, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    saved = checkpoint_steps(sweep_dir)
    filler.unlink()
    wait_for_ray_to_exit()

    resumed = cli("resume", "full", "--storage", str(storage), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    for name, step in saved.items():
        if step >= 20:  # its checkpoint was kept and continued, not deleted
            assert max(a["from_step"] for a in attempts(sweep_dir / "runs" / name)) >= 20
    check_sweep_outputs(uri, storage, "full", 2)
