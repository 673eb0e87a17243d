"""``signlock server`` / ``signlock ui``: MLflow's own server, bound to 127.0.0.1 by default."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from signlock.trainables.errors import ConfigError

BACKEND_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://")


def mlflow_server_command(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    ui_only: bool = False,
) -> list[str]:
    """The ``mlflow server`` (or ``mlflow ui``) command line for these stores."""
    if not backend_store_uri.startswith(BACKEND_SCHEMES):
        raise ConfigError(
            "--backend-store-uri", backend_store_uri, "one of " + ", ".join(BACKEND_SCHEMES)
        )
    if not 0 < port < 65536:
        raise ConfigError("--port", port, "1..65535")
    if backend_store_uri.startswith("sqlite:///"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui" if ui_only else "server"]
    command += ["--backend-store-uri", backend_store_uri, "--host", host, "--port", str(port)]
    if ui_only:
        return [*command, "--default-artifact-root", _as_uri(artifacts_destination)]
    return [*command, "--artifacts-destination", _as_uri(artifacts_destination)]


def _as_uri(location: str) -> str:
    if "://" in location:
        return location
    path = Path(location).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def run_foreground(command: list[str]) -> int:
    """Run until Ctrl-C; the server's own output goes to the terminal."""
    print("signlock: " + " ".join(command), file=sys.stderr)
    process = subprocess.Popen(command, env=os.environ.copy())
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
