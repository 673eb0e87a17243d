"""``signlock server``/``ui`` command lines (the server itself is exercised in test_sweep)."""

from __future__ import annotations

import pytest

from signlock.orchestrator.tracking import mlflow_server_command
from signlock.trainables.errors import ConfigError


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
