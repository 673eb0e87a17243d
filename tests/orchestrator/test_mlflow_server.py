"""``signlock server``/``ui``: command lines, and stopping a real server stops all of it (its
use by sweeps is exercised in test_sweep and test_postgres_server)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from signlock.orchestrator.tracking import mlflow_server_command
from signlock.trainables.errors import ConfigError
from tests.orchestrator.conftest import SIGNLOCK
from tests.orchestrator.test_sweep import start_server


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
