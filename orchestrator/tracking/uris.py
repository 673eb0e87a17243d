"""Where MLflow stores are: tracking URIs (made absolute for trial workers), the artifact root of
new experiments, the file of a local store, and opening a store that must already exist."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.tracking import MlflowClient

from signlock.trainables.errors import InputNotFoundError

# MLflow announces creating or upgrading a sqlite store's tables at INFO level on the terminal.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def default_tracking_uri(root: Path) -> str:
    """The embedded default: a sqlite store beside the sweeps (MLflow 3's own default backend)."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def absolute_tracking_uri(uri: str) -> str:
    """Local stores with absolute paths: trial workers run in other working directories."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:")).resolve().as_uri()
    if "://" not in uri:  # a bare path is MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def default_artifact_root(tracking_uri: str, root: Path) -> str | None:
    """Artifact location for new experiments in a local store: ``mlartifacts`` beside a sqlite
    file, else under ``root``. Tracking servers choose their own (None)."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return (root / "mlartifacts").resolve().as_uri()


def local_store_path(tracking_uri: str) -> Path | None:
    """The file or directory of a local store (sqlite, file store); None for servers."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///"))
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
    return None


def open_existing_store(tracking_uri: str) -> MlflowClient:
    """A client of a store that must already exist: read-only commands never create one. A
    local sqlite file that is empty, truncated or garbled is one line naming it."""
    import sqlite3

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from signlock.trainables.files import UnreadableFileError

    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise InputNotFoundError(f"no MLflow store at {path}")
    if not tracking_uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri)
    if path.is_file() and path.stat().st_size == 0:  # sqlite would make it a new store
        raise UnreadableFileError(path, "empty, not an MLflow sqlite store")
    try:
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    except (SQLAlchemyError, sqlite3.Error, MlflowException) as error:
        cause = str(getattr(error, "orig", None) or error).strip().splitlines() or ["unknown"]
        reason = f"not a readable MLflow sqlite store ({cause[0][:200]})"
        raise UnreadableFileError(path, reason) from None
    return client
