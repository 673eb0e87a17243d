"""MLflow for many writers: `signlock server` on a real PostgreSQL, a sweep with concurrent
trials logging through it over HTTP, and `signlock query` reading the runs back."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.orchestrator.test_sweep import check_sweep_outputs, free_port, start_server, sweep_args


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries (Debian's `postgresql`, installed if missing)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL's server binaries are not installed (Debian package postgresql)"
    return Path(found[-1]).parent


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth), stopped and removed after."""
    binaries = postgres_bin()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: the socket lives here
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run([*as_postgres, binaries / "initdb", "-D", data, "-U", "postgres",
                    "--auth=trust"], check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_postgres, binaries / "pg_ctl", "-D", data, "-l", root / "log",
                    "-o", options, "-w", "start"], check=True, capture_output=True)  # fmt: skip
    try:
        subprocess.run([*as_postgres, binaries / "createdb", "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "mlflow"], check=True)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_postgres, binaries / "pg_ctl", "-D", data, "-m", "fast", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_sweep_logs_through_an_mlflow_server_into_postgresql(
    tmp_path, cli, write_spec, sweep_root, tiny_spec, signlock_command, postgres_url
):
    server, uri = start_server(signlock_command, tmp_path, postgres_url, tmp_path / "artifacts")
    try:
        spec = write_spec(tiny_spec())
        result = cli(*sweep_args(spec, "pg", sweep_root, uri, "--max-concurrent", "2"))
        assert result.returncode == 0, result.stderr[-3000:]
        check_sweep_outputs(uri, sweep_root, "pg", 4)

        query = cli("query", "--tracking-uri", uri, "--sweep", "pg", "--format", "json")
        assert query.returncode == 0, query.stderr
        rows = json.loads(query.stdout)
        assert len(rows) == 4 and all(row["metrics.val_ppl"] > 1 for row in rows)
    finally:
        server.terminate()
        server.wait(timeout=30)
    with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs WHERE lifecycle_stage = 'active'")
        assert cursor.fetchone()[0] == 5  # the parent and four trials, stored in PostgreSQL
        cursor.execute("SELECT count(DISTINCT run_uuid) FROM metrics WHERE key = 'train_loss'")
        assert cursor.fetchone()[0] == 4
