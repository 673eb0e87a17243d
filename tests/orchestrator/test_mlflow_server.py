"""``signlock server``/``ui``: command lines, and stopping a real server stops all of it (its
use by sweeps is exercised in test_sweep and test_postgres_server)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from signlock.orchestrator.tracking import mlflow_server_command, server_environment
from signlock.trainables.errors import ConfigError
from tests.orchestrator.conftest import SIGNLOCK
from tests.orchestrator.test_sweep import as_started_from_a_terminal, free_port, start_server


def test_server_binds_loopback_by_default_and_proxies_artifacts(tmp_path):
    db = tmp_path / "db" / "mlflow.db"
    command = mlflow_server_command(
        backend_store_uri=f"sqlite:///{db}", artifacts_destination=str(tmp_path / "art")
    )
    assert command[1] == "server"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--artifacts-destination") + 1] == (tmp_path / "art").as_uri()
    assert db.parent.is_dir() and (tmp_path / "art").is_dir()


def test_ui_and_explicit_host():
    command = mlflow_server_command(
        backend_store_uri="postgresql://signlock@db.example/mlflow",
        artifacts_destination="s3://bucket/artifacts",
        host="0.0.0.0",
        port=8080,
        ui_only=True,
    )
    assert command[1] == "ui" and command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--default-artifact-root") + 1] == "s3://bucket/artifacts"
    # the psycopg2 driver of signlock[postgres], not SQLAlchemy's default psycopg 3
    store = command[command.index("--backend-store-uri") + 1]
    assert store == "postgresql+psycopg2://signlock@db.example/mlflow"


def test_ui_runs_one_worker_and_no_job_consumers_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    options = {"backend_store_uri": f"sqlite:///{tmp_path / 'm.db'}", "artifacts_destination": "a"}
    ui = mlflow_server_command(**options, ui_only=True)
    assert ui[ui.index("--workers") + 1] == "1"
    assert "--workers" not in mlflow_server_command(**options)  # MLflow's 4, for sweeps
    server = mlflow_server_command(**options, workers=8)
    assert server[server.index("--workers") + 1] == "8"
    assert server_environment(ui_only=True)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in server_environment(ui_only=False)
    with pytest.raises(ConfigError, match="--workers"):
        mlflow_server_command(**options, workers=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"backend_store_uri": "redis://x"}, "--backend-store-uri"), ({"port": 0}, "--port")],
)
def test_bad_server_options(tmp_path, kwargs, field):
    options = {
        "backend_store_uri": f"sqlite:///{tmp_path / 'm.db'}",
        "artifacts_destination": str(tmp_path),
        **kwargs,
    }
    with pytest.raises(ConfigError, match=field):
        mlflow_server_command(**options)


def processes_mentioning(text: str) -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_server_stops_every_process_it_started(tmp_path, stop):
    """MLflow's server runs uvicorn workers and job consumers in processes of its own; a
    terminated `signlock server` must not leave them running (each holds ~250 MB)."""
    store = tmp_path / "stop.db"
    server, _ = start_server(SIGNLOCK, tmp_path, f"sqlite:///{store}", tmp_path / "artifacts")
    started = processes_mentioning(str(store)) | processes_mentioning("huey")
    try:
        assert len(started) >= 2
        server.send_signal(stop)
        server.wait(timeout=60)
        deadline = time.monotonic() + 30
        while processes_mentioning(str(store)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not processes_mentioning(str(store)), "MLflow processes outlived signlock server"
    finally:  # a failed run must not leave ~250 MB processes behind for the tests after it
        for pid in started | {server.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def live_group_members(pgid: int) -> set[int]:
    """Processes of this process group that still run (zombies awaiting a reaper do not)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(stat.parent.name))
    return members


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_killing_signlock_server_outright_stops_every_process_it_started(tmp_path):
    """`kill -9` gives signlock no chance to stop MLflow: MLflow, its uvicorn workers and job
    consumers (in a session of their own) must still go, and the port must be free again."""
    store = tmp_path / "kill.db"
    server, uri = start_server(SIGNLOCK, tmp_path, f"sqlite:///{store}", tmp_path / "artifacts")
    port = int(uri.rsplit(":", 1)[1])
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    group = os.getpgid(int(children[0]))  # MLflow's own session: its group is stopped as one
    assert group not in (os.getpgrp(), os.getpgid(server.pid))
    started = live_group_members(group)
    try:
        assert len(started) >= 2
        server.kill()
        server.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (listening(port) or live_group_members(group)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not listening(port), f"MLflow still serves on port {port}"
        assert not live_group_members(group), "MLflow processes outlived signlock server"
    finally:
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def lines_of(stream) -> queue.Queue:
    """Each line of ``stream`` as it arrives (None at its end), read by a thread of its own."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def first_line_with(text: str, lines: queue.Queue, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    with contextlib.suppress(queue.Empty):
        while (line := lines.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
            if text in line:
                return line
    return None


def test_ui_prints_its_url_once_it_answers_and_keeps_mlflow_output_in_a_log(tmp_path):
    """The URL line comes only when the UI answers (MLflow used to refuse connections for ~40 s
    after its own startup lines); MLflow's DeprecationWarnings go to the log, not the terminal."""
    port = free_port()
    store = tmp_path / "runs" / "mlflow.db"
    ui = subprocess.Popen(
        [*SIGNLOCK, "ui", "--port", str(port), "--backend-store-uri", f"sqlite:///{store}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_started_from_a_terminal,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    stdout, stderr = lines_of(ui.stdout), lines_of(ui.stderr)
    try:
        assert first_line_with(url, stdout, timeout=120), "signlock ui printed no URL line"
        with urllib.request.urlopen(url, timeout=5) as response:  # at once: no retries
            assert response.status == 200
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=60)
    terminal = "".join(iter(stderr.get, None)) + "".join(iter(stdout.get, None))
    assert "DeprecationWarning" not in terminal, terminal
    log = store.parent / "mlflow-server.log"
    assert str(log) in terminal and "DeprecationWarning" in log.read_text()
