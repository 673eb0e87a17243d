"""What signlock's values become on MLflow: flat string params, finite float metrics, the
package versions and the git commit a sweep ran with."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from signlock.orchestrator.tracking.tags import PARAM_VALUE_LIMIT

PACKAGES = ("signlock", "torch", "ray", "mlflow", "optuna", "pandas", "pyarrow", "submitit")


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"init.a_init": "0.02", …}`` (lists as JSON), clipped to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            flat[name] = text[:PARAM_VALUE_LIMIT]
    return flat


def finite_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a row or summary (NaN marks 'not measured this row')."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(source: Path | None = None) -> str | None:
    """The commit of the signlock checkout, when it is one (editable installs)."""
    here = source or Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None
